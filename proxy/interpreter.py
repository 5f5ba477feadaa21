"""The code interpreter as the upstream model sees it: a function tool, a system note, and
tool results written for a model to read."""

import re
from dataclasses import dataclass, field
from typing import Any

from executor.api import ExecutionResult
from proxy.errors import InvalidRequestError
from proxy.jsonutil import loads

TOOL_NAME = "code_interpreter"
LANGUAGES = ("python", "javascript", "bash", "c", "cpp")

TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": TOOL_NAME,
        "description": (
            "Run code in a sandbox and get its output. Python runs in a stateful Jupyter "
            "kernel: variables, imports and files persist between calls. javascript (node), "
            "bash, c and cpp run as one-shot programs in the same sandbox. Use /mnt/data for "
            "files. Call plt.show() or display() to show images."
        ),
        "parameters": {
            "type": "object",
            "properties": {
                "code": {"type": "string", "description": "The code to run."},
                "language": {
                    "type": "string",
                    "enum": list(LANGUAGES),
                    "description": "The language of the code (default: python).",
                },
            },
            "required": ["code"],
        },
    },
}

SYSTEM_NOTE = (
    "You have a code interpreter: call the `code_interpreter` tool to run code. Python runs in "
    "a stateful Jupyter kernel (state persists between calls) with numpy, pandas, matplotlib, "
    "seaborn, scipy, scikit-learn, statsmodels, sympy, pillow and openpyxl; javascript (node), "
    "bash, c and cpp run as one-shot programs. The sandbox has no internet access. The working "
    "folder is /mnt/data: files the user provided are there, and files you save there (charts "
    "as PNG, data as CSV or XLSX) are given to the user, who can download them. Link a saved "
    "file as sandbox:/mnt/data/<name>. Charts shown with plt.show() are also given to the user."
)

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def system_note(files: list[tuple[str, int]]) -> str:
    if not files:
        return SYSTEM_NOTE
    listing = "\n".join(f"- {path} ({size} bytes)" for path, size in files)
    return f"{SYSTEM_NOTE}\nFiles in /mnt/data now:\n{listing}"


def add_system_note(messages: list[dict[str, Any]], note: str) -> list[dict[str, Any]]:
    """The messages with the note joined to a leading system message, or put first.

    Joining instead of adding a second system message keeps models whose chat template
    accepts only one system message working.
    """
    out = list(messages)
    first = out[0] if out else None
    if first is not None and first.get("role") in ("system", "developer"):
        content = first.get("content")
        if isinstance(content, str):
            out[0] = {**first, "content": f"{content}\n\n{note}"}
            return out
        if isinstance(content, list):
            out[0] = {**first, "content": [*content, {"type": "text", "text": note}]}
            return out
    return [{"role": "system", "content": note}, *out]


def parse_arguments(raw: str) -> tuple[str, str]:
    """The (code, language) of a tool call; raises InvalidRequestError for the model to read."""
    try:
        args = loads(raw or "{}")
    except ValueError:
        # Some models send the bare code instead of JSON arguments.
        if raw.strip():
            return raw, "python"
        raise InvalidRequestError("The arguments are not valid JSON.") from None
    if not isinstance(args, dict) or not isinstance(args.get("code"), str):
        raise InvalidRequestError('The arguments must be a JSON object with a "code" string.')
    language = args.get("language") or "python"
    if not isinstance(language, str):
        raise InvalidRequestError('"language" must be a string.')
    return args["code"], language


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def clip(text: str, limit: int) -> str:
    """Head and tail of `text` within `limit` characters, marking what was left out."""
    if len(text) <= limit:
        return text
    head = limit * 2 // 3
    tail = limit - head
    omitted = len(text) - head - tail
    return f"{text[:head]}\n…[{omitted} characters omitted]…\n{text[-tail:]}"


def tool_result(
    result: ExecutionResult,
    *,
    saved_files: list[tuple[str, int]],
    images: int,
    limit: int,
    skipped_files: list[str] | None = None,
) -> str:
    """What the model reads back after one execution."""
    parts: list[str] = []
    if result.stdout:
        parts.append(f"[stdout]\n{strip_ansi(result.stdout)}")
    if result.stdout_truncated:
        parts.append("[stdout was truncated]")
    if result.stderr:
        parts.append(f"[stderr]\n{strip_ansi(result.stderr)}")
    if result.stderr_truncated:
        parts.append("[stderr was truncated]")
    for output in result.results:
        text = output.data.get("text/plain")
        if output.kind == "execute_result" and text:
            parts.append(f"[result]\n{strip_ansi(text)}")
    if result.error is not None:
        trace = strip_ansi("\n".join(result.error.traceback)).strip()
        parts.append(f"[error]\n{trace or f'{result.error.name}: {result.error.value}'}")
    if result.timed_out:
        parts.append("[the execution timed out and was stopped]")
    if result.state_lost:
        parts.append(
            "[the sandbox was restarted: variables and imports are gone; files in /mnt/data "
            "were kept]"
        )
    if images:
        parts.append(f"[{images} image(s) displayed to the user]")
    if saved_files:
        listing = "\n".join(f"{path} ({size} bytes)" for path, size in saved_files)
        parts.append(f"[files saved and given to the user]\n{listing}")
    if skipped_files:
        listing = "\n".join(skipped_files)
        parts.append(f"[files NOT saved for the user]\n{listing}")
    if result.exit_code not in (None, 0) and result.error is None:
        parts.append(f"[exit code {result.exit_code}]")
    if not parts:
        parts.append("[no output]")
    return clip("\n".join(parts), limit)


@dataclass
class Plan:
    """How a chat request uses the interpreter: which session and files, and the other tools."""

    container: str | None = None
    file_ids: list[str] = field(default_factory=list)
    client_tools: list[dict[str, Any]] = field(default_factory=list)
    # Turned on by server policy rather than by a `code_interpreter` tool in the request.
    by_policy: bool = False
    # How runs show in the visible reply: markdown, files or none.
    transcript: str | None = None


def plan_request(body: dict[str, Any]) -> Plan | None:
    """The interpreter plan of a request that carries a `code_interpreter` tool, else None."""
    tools = body.get("tools")
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise InvalidRequestError("Invalid 'tools': expected an array.", param="tools")
    plan: Plan | None = None
    others: list[dict[str, Any]] = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise InvalidRequestError(
                f"Invalid 'tools[{i}]': expected an object.", param=f"tools[{i}]"
            )
        if tool.get("type") != "code_interpreter":
            function = tool.get("function")
            if isinstance(function, dict) and function.get("name") == TOOL_NAME:
                raise InvalidRequestError(
                    f"The function name '{TOOL_NAME}' is reserved for the code interpreter; "
                    'use {"type": "code_interpreter"} to enable it.',
                    param=f"tools[{i}].function.name",
                )
            others.append(tool)
            continue
        plan = Plan(transcript=tool.get("transcript"))
        container = tool.get("container")
        file_ids = tool.get("file_ids", [])
        if isinstance(container, str):
            plan.container = container
        elif isinstance(container, dict):
            if container.get("type", "auto") != "auto":
                raise InvalidRequestError(
                    "Invalid 'container.type': expected 'auto'.",
                    param=f"tools[{i}].container.type",
                )
            file_ids = container.get("file_ids", file_ids)
        elif container is not None:
            raise InvalidRequestError(
                "Invalid 'container': expected a container id or an object.",
                param=f"tools[{i}].container",
            )
        if not isinstance(file_ids, list) or not all(isinstance(f, str) for f in file_ids):
            raise InvalidRequestError(
                "Invalid 'file_ids': expected an array of file ids.",
                param=f"tools[{i}].container.file_ids",
            )
        plan.file_ids = list(dict.fromkeys(file_ids))
    if plan is not None:
        plan.client_tools = others
    return plan
