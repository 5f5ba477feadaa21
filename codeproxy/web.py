"""ASGI pieces both services share: how uvicorn serves them, request ids, OpenAI's error JSON,
the wording of 404, 405 and validation errors. It imports neither service; each passes in how
it renders an error."""

import re
import secrets
from collections.abc import Callable, Sequence
from typing import Any

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from codeproxy import logs

# A request line plus headers larger than this is refused (400) while uvicorn parses it, before
# any middleware, authentication or routing sees the request.
MAX_REQUEST_HEAD_BYTES = 64 * 1024

UNKNOWN_URL = "Unknown request URL. Please check the URL and method."
METHOD_NOT_ALLOWED = "Method not allowed for this URL."
_REQUEST_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


def server_options() -> dict[str, Any]:
    """uvicorn options of every server of both services.

    h11, not httptools (uvicorn's default when installed): httptools buffers a request head
    of any size, so one request with a 200 MB header grew a service by as much.
    """
    return {"http": "h11", "h11_max_incomplete_event_size": MAX_REQUEST_HEAD_BYTES}


def error_body(message: str, type_: str, param: str | None, code: str | None) -> dict[str, Any]:
    """OpenAI's error JSON."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def describe_validation_errors(errors: Sequence[Any]) -> tuple[str, str | None, str]:
    """(code, param, message) for the first of FastAPI's request validation errors.

    `code` is `invalid_json`, `missing_required_parameter` or `invalid_value`.
    """
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "header")]
    param = ".".join(loc) or None
    kind = first.get("type")
    if kind == "json_invalid":
        return "invalid_json", None, "The request body is not valid JSON."
    if kind == "missing":
        return "missing_required_parameter", param, f"Missing required parameter: '{param}'."
    return "invalid_value", param, f"Invalid '{param}': {first.get('msg', 'invalid value')}."


def new_request_id() -> str:
    return "req_" + secrets.token_hex(12)


class RequestIdMiddleware:
    """Sends `x-request-id` on every HTTP response (the OpenAI SDK exposes it as
    `request_id`), and answers an exception that escaped every handler with `render(exc)`, so
    even that response carries the id.

    With `accept_incoming`, a well-formed `x-request-id` of the caller is kept (the proxy
    passes its own id to the executor, so both services log the same id).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        render: Callable[[Exception], Response],
        accept_incoming: bool = False,
    ) -> None:
        self.app = app
        self._render = render
        self._accept_incoming = accept_incoming

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = ""
        if self._accept_incoming:
            incoming = Headers(scope=scope).get("x-request-id", "")
            request_id = incoming if _REQUEST_ID.fullmatch(incoming) else ""
        request_id = request_id or new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        logs.request_id.set(request_id)
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                MutableHeaders(scope=message)["x-request-id"] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            if started:
                raise
            await self._render(exc)(scope, receive, send_with_id)
