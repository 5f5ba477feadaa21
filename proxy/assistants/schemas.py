"""Request bodies of the Assistants API, and the checks pydantic cannot say clearly.

Unknown fields are refused, as OpenAI does. Tools and tool resources are checked by hand so
that an unsupported one (`file_search`) gets a message naming it.
"""

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from proxy.errors import InvalidRequestError
from proxy.interpreter import TOOL_NAME

FUNCTION_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_FILES = 20

Metadata = dict[
    Annotated[str, StringConstraints(max_length=64)],
    Annotated[str, StringConstraints(max_length=512)],
]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AssistantFields(Strict):
    name: str | None = Field(default=None, max_length=256)
    description: str | None = Field(default=None, max_length=512)
    instructions: str | None = Field(default=None, max_length=256_000)
    tools: list[Any] | None = Field(default=None, max_length=128)
    tool_resources: dict[str, Any] | None = None
    metadata: Metadata | None = Field(default=None, max_length=16)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    response_format: str | dict[str, Any] | None = None
    reasoning_effort: str | None = None


class CreateAssistant(AssistantFields):
    model: str = Field(min_length=1)


class ModifyAssistant(AssistantFields):
    model: str | None = Field(default=None, min_length=1)


class CreateMessage(Strict):
    role: Literal["user", "assistant"]
    content: str | list[Any]
    attachments: list[Any] | None = None
    metadata: Metadata | None = Field(default=None, max_length=16)


class ModifyMessage(Strict):
    metadata: Metadata | None = Field(default=None, max_length=16)


class CreateThread(Strict):
    messages: list[CreateMessage] = Field(default_factory=list, max_length=32)
    tool_resources: dict[str, Any] | None = None
    metadata: Metadata | None = Field(default=None, max_length=16)


class ModifyThread(Strict):
    tool_resources: dict[str, Any] | None = None
    metadata: Metadata | None = Field(default=None, max_length=16)


class Truncation(Strict):
    type: Literal["auto", "last_messages"]
    last_messages: int | None = Field(default=None, ge=1)


class RunFields(Strict):
    assistant_id: str
    model: str | None = None
    instructions: str | None = None
    tools: list[Any] | None = Field(default=None, max_length=128)
    metadata: Metadata | None = Field(default=None, max_length=16)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stream: bool | None = None
    max_prompt_tokens: int | None = Field(default=None, ge=256)
    max_completion_tokens: int | None = Field(default=None, ge=256)
    truncation_strategy: Truncation | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool = True
    response_format: str | dict[str, Any] | None = None
    reasoning_effort: str | None = None


class CreateRun(RunFields):
    additional_instructions: str | None = None
    additional_messages: list[CreateMessage] | None = Field(default=None, max_length=32)


class CreateThreadAndRun(RunFields):
    thread: CreateThread | None = None
    tool_resources: dict[str, Any] | None = None


class ModifyRun(Strict):
    metadata: Metadata | None = Field(default=None, max_length=16)


class ToolOutput(Strict):
    tool_call_id: str
    output: str = ""


class SubmitToolOutputs(Strict):
    tool_outputs: list[ToolOutput]
    stream: bool | None = None


def unsupported(what: str, param: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"{what} is not supported by this server: only the 'code_interpreter' and 'function' "
        "tools are.",
        param=param,
        code="unsupported_value",
    )


def check_tools(tools: list[Any], param: str = "tools") -> list[dict[str, Any]]:
    """The tools in OpenAI's stored shape; `file_search` and unknown types are refused."""
    out: list[dict[str, Any]] = []
    for i, tool in enumerate(tools):
        where = f"{param}[{i}]"
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind == "code_interpreter":
            out.append({"type": "code_interpreter"})
        elif kind == "function":
            out.append({"type": "function", "function": _function(tool.get("function"), where)})
        elif kind == "file_search":
            raise unsupported("The 'file_search' tool", f"{where}.type")
        else:
            raise InvalidRequestError(
                f"Invalid '{where}.type': expected 'code_interpreter' or 'function'.",
                param=f"{where}.type",
                code="invalid_value",
            )
    return out


def _function(function: Any, where: str) -> dict[str, Any]:
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise InvalidRequestError(
            f"Missing required parameter: '{where}.function.name'.",
            param=f"{where}.function.name",
            code="missing_required_parameter",
        )
    name = function["name"]
    if not FUNCTION_NAME.fullmatch(name):
        raise InvalidRequestError(
            f"Invalid '{where}.function.name': expected 1 to 64 letters, digits, '_' or '-'.",
            param=f"{where}.function.name",
            code="invalid_value",
        )
    if name == TOOL_NAME:
        raise InvalidRequestError(
            f"The function name '{TOOL_NAME}' is reserved for the code interpreter; use "
            '{"type": "code_interpreter"} to enable it.',
            param=f"{where}.function.name",
        )
    parameters = function.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise InvalidRequestError(
            f"Invalid '{where}.function.parameters': expected a JSON schema object.",
            param=f"{where}.function.parameters",
        )
    out: dict[str, Any] = {"name": name, "description": function.get("description")}
    out["parameters"] = parameters if parameters is not None else {}
    out["strict"] = bool(function.get("strict", False))
    return out


def check_tool_resources(resources: dict[str, Any] | None, param: str) -> dict[str, Any]:
    """`{"code_interpreter": {"file_ids": […]}}`; vector stores are refused."""
    resources = resources or {}
    for key in resources:
        if key not in ("code_interpreter", "file_search"):
            raise InvalidRequestError(
                f"Invalid '{param}': unknown tool resource '{key}'.", param=f"{param}.{key}"
            )
    search = resources.get("file_search")
    if isinstance(search, dict) and (search.get("vector_store_ids") or search.get("vector_stores")):
        raise unsupported("The 'file_search' tool resource", f"{param}.file_search")
    code = resources.get("code_interpreter") or {}
    file_ids = code.get("file_ids", []) if isinstance(code, dict) else None
    if not isinstance(file_ids, list) or not all(isinstance(f, str) for f in file_ids):
        raise InvalidRequestError(
            f"Invalid '{param}.code_interpreter.file_ids': expected an array of file ids.",
            param=f"{param}.code_interpreter.file_ids",
        )
    if len(file_ids) > MAX_FILES:
        raise InvalidRequestError(
            f"Invalid '{param}.code_interpreter.file_ids': at most {MAX_FILES} files.",
            param=f"{param}.code_interpreter.file_ids",
            code="array_above_max_length",
        )
    return {"code_interpreter": {"file_ids": list(dict.fromkeys(file_ids))}}


def check_response_format(value: str | dict[str, Any] | None, param: str) -> Any:
    """`auto`, `{"type": "text"}`, `{"type": "json_object"}` or `{"type": "json_schema", …}`."""
    if value is None or value == "auto":
        return "auto" if value is not None else None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind not in ("text", "json_object", "json_schema"):
        raise InvalidRequestError(
            f"Invalid '{param}': expected 'auto' or an object whose type is 'text', "
            "'json_object' or 'json_schema'.",
            param=param,
            code="invalid_value",
        )
    return value


def check_tool_choice(choice: Any, tools: list[dict[str, Any]]) -> Any:
    """`none`, `auto`, `required`, `{"type": "code_interpreter"}` or a named function."""
    if choice is None:
        return "auto"
    if choice in ("none", "auto", "required"):
        return choice
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "file_search":
        raise unsupported("The 'file_search' tool", "tool_choice.type")
    if kind == "code_interpreter":
        if not any(t["type"] == "code_interpreter" for t in tools):
            raise InvalidRequestError(
                "Invalid 'tool_choice': the run has no 'code_interpreter' tool.",
                param="tool_choice",
            )
        return {"type": "code_interpreter"}
    if kind == "function":
        name = (choice.get("function") or {}).get("name")
        if not any(t["type"] == "function" and t["function"]["name"] == name for t in tools):
            raise InvalidRequestError(
                f"Invalid 'tool_choice': the run has no function named {name!r}.",
                param="tool_choice.function.name",
            )
        return {"type": "function", "function": {"name": name}}
    raise InvalidRequestError(
        "Invalid 'tool_choice': expected 'none', 'auto', 'required' or a tool.",
        param="tool_choice",
        code="invalid_value",
    )
