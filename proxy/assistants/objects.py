"""The objects of the Assistants API as OpenAI serves them, and their state changes.

Everything here is a plain function over dicts: the routes build objects with it, the run
renderer folds engine events into them, and the sweep of abandoned runs ends them.
"""

import time
from typing import Any

from proxy.assistants.schemas import unsupported
from proxy.errors import APIError, InvalidRequestError, UpstreamError, status_of
from proxy.ids import new_id

# A run ends in one of these; the others hold the thread.
TERMINAL = ("completed", "failed", "cancelled", "expired", "incomplete")
# The statuses in which a run can still be cancelled.
CANCELLABLE = ("queued", "in_progress", "requires_action")
IMAGE_DETAILS = ("auto", "low", "high")


def now() -> int:
    return int(time.time())


def listing(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """OpenAI's cursor page."""
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


def deleted(id: str, kind: str) -> dict[str, Any]:
    return {"id": id, "object": f"{kind}.deleted", "deleted": True}


def thread_object(
    *, tool_resources: dict[str, Any], metadata: dict[str, str] | None
) -> dict[str, Any]:
    return {
        "id": new_id("thread_"),
        "object": "thread",
        "created_at": now(),
        "tool_resources": tool_resources,
        "metadata": metadata or {},
    }


def message_object(
    *,
    thread_id: str,
    role: str,
    content: list[dict[str, Any]],
    attachments: list[dict[str, Any]] | None = None,
    metadata: dict[str, str] | None = None,
    run_id: str | None = None,
    assistant_id: str | None = None,
    status: str = "completed",
) -> dict[str, Any]:
    created = now()
    return {
        "id": new_id("msg_"),
        "object": "thread.message",
        "created_at": created,
        "thread_id": thread_id,
        "status": status,
        "incomplete_details": None,
        "completed_at": created if status == "completed" else None,
        "incomplete_at": None,
        "role": role,
        "content": content,
        "assistant_id": assistant_id,
        "run_id": run_id,
        "attachments": attachments or [],
        "metadata": metadata or {},
    }


def text_part(value: str, annotations: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"type": "text", "text": {"value": value, "annotations": annotations or []}}


def message_content(content: str | list[Any], param: str) -> tuple[list[dict[str, Any]], list[str]]:
    """A message's content parts as stored, and the file ids its images name."""
    if isinstance(content, str):
        return [text_part(content)], []
    if not content:
        raise InvalidRequestError(
            f"Invalid '{param}': expected a string or a non-empty array of content parts.",
            param=param,
        )
    parts: list[dict[str, Any]] = []
    files: list[str] = []
    for i, part in enumerate(content):
        where = f"{param}[{i}]"
        kind = part.get("type") if isinstance(part, dict) else None
        body = part.get(kind) if isinstance(part, dict) and isinstance(kind, str) else None
        if kind == "text" and isinstance(body, str):
            parts.append(text_part(body))
        elif (
            kind == "image_file" and isinstance(body, dict) and isinstance(body.get("file_id"), str)
        ):
            files.append(body["file_id"])
            parts.append({"type": "image_file", "image_file": _image(body, "file_id", where)})
        elif kind == "image_url" and isinstance(body, dict) and isinstance(body.get("url"), str):
            parts.append({"type": "image_url", "image_url": _image(body, "url", where)})
        else:
            raise InvalidRequestError(
                f"Invalid '{where}': expected a 'text', 'image_file' or 'image_url' part.",
                param=where,
                code="invalid_value",
            )
    return parts, files


def _image(body: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    detail = body.get("detail", "auto")
    if detail not in IMAGE_DETAILS:
        raise InvalidRequestError(
            f"Invalid '{where}.detail': expected 'auto', 'low' or 'high'.",
            param=f"{where}.detail",
            code="invalid_value",
        )
    return {key: body[key], "detail": detail}


def message_attachments(
    attachments: list[Any] | None, param: str
) -> tuple[list[dict[str, Any]], list[str]]:
    """A message's attachments as stored, and the file ids to put in the sandbox."""
    out: list[dict[str, Any]] = []
    files: list[str] = []
    for i, attachment in enumerate(attachments or []):
        where = f"{param}[{i}]"
        file_id = attachment.get("file_id") if isinstance(attachment, dict) else None
        tools = attachment.get("tools", []) if isinstance(attachment, dict) else None
        if not isinstance(file_id, str) or not isinstance(tools, list):
            raise InvalidRequestError(
                f"Invalid '{where}': expected an object with a 'file_id' and 'tools'.",
                param=where,
            )
        kinds = [t.get("type") if isinstance(t, dict) else None for t in tools]
        if "file_search" in kinds:
            raise unsupported("The 'file_search' tool", f"{where}.tools")
        if any(kind != "code_interpreter" for kind in kinds):
            raise InvalidRequestError(
                f'Invalid \'{where}.tools\': expected [{{"type": "code_interpreter"}}].',
                param=f"{where}.tools",
                code="invalid_value",
            )
        out.append({"file_id": file_id, "tools": [{"type": "code_interpreter"}] if kinds else []})
        if kinds:
            files.append(file_id)
    return out, files


def step_object(run: dict[str, Any], details: dict[str, Any]) -> dict[str, Any]:
    """A new step of `run`, in progress."""
    return {
        "id": new_id("step_"),
        "object": "thread.run.step",
        "created_at": now(),
        "run_id": run["id"],
        "assistant_id": run["assistant_id"],
        "thread_id": run["thread_id"],
        "type": details["type"],
        "status": "in_progress",
        "cancelled_at": None,
        "completed_at": None,
        "expired_at": None,
        "failed_at": None,
        "last_error": None,
        "step_details": details,
        "usage": None,
        "metadata": {},
    }


def public_usage(usage: dict[str, Any] | None) -> dict[str, int] | None:
    """Token counts as runs and steps report them (no details)."""
    if not usage:
        return None
    prompt = int(usage.get("prompt_tokens", 0))
    completion = int(usage.get("completion_tokens", 0))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": int(usage.get("total_tokens", prompt + completion)),
    }


def last_error(err: APIError) -> dict[str, str]:
    """A run's `last_error` for an error: rate limits are told apart, the rest is ours."""
    code = "rate_limit_exceeded" if status_of(err) == 429 else "server_error"
    message = err.message
    if isinstance(err, UpstreamError):
        message = f"The model failed: {message}"
    return {"code": code, "message": message}


STEP_ENDS = {
    "completed": "completed_at",
    "failed": "failed_at",
    "cancelled": "cancelled_at",
    "expired": "expired_at",
}


def end_step(
    step: dict[str, Any], status: str, at: int, error: dict[str, str] | None = None
) -> None:
    """Close a step that is still in progress (a no-op once it is closed)."""
    if step["status"] != "in_progress":
        return
    step["status"] = status
    step[STEP_ENDS[status]] = at
    if error is not None:
        step["last_error"] = error


def end_message(message: dict[str, Any], at: int, reason: str | None = None) -> None:
    """Close a message still in progress: completed, or incomplete for `reason`."""
    if message["status"] != "in_progress":
        return
    if reason is None:
        message["status"] = "completed"
        message["completed_at"] = at
    else:
        message["status"] = "incomplete"
        message["incomplete_at"] = at
        message["incomplete_details"] = {"reason": reason}


RUN_ENDS = {
    "completed": "completed_at",
    "failed": "failed_at",
    "cancelled": "cancelled_at",
    "expired": None,
    "incomplete": None,
}


def end_run(
    run: dict[str, Any],
    status: str,
    at: int,
    *,
    error: dict[str, str] | None = None,
    reason: str | None = None,
) -> None:
    """Put a run in a terminal status."""
    run["status"] = status
    run["required_action"] = None
    run["expires_at"] = None
    stamp = RUN_ENDS[status]
    if stamp is not None:
        run[stamp] = at
    if error is not None:
        run["last_error"] = error
    if reason is not None:
        run["incomplete_details"] = {"reason": reason}


# What an in-progress step and message become when their run ends in a status.
STEP_FATE = {
    "failed": "failed",
    "cancelled": "cancelled",
    "expired": "expired",
    "incomplete": "completed",
}
MESSAGE_FATE = {
    "failed": "run_failed",
    "cancelled": "run_cancelled",
    "expired": "run_expired",
    "incomplete": "max_tokens",
}
