"""The internal API of the execution service: app factory, lifespan, auth and error rendering.

Every error leaves as OpenAI's error JSON, rendered in one place (`_render`): the service's
`ExecutorError`s, FastAPI's validation errors, Starlette's 404/405, and anything unexpected
(a 500 whose details are only logged).
"""

import contextlib
import hmac
import logging
import math
import re
import secrets
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from executor.client import TOKEN_HEADER, Executor
from executor.errors import ExecutorError, InvalidRequest, NotFound, Unauthorized
from executor.routes import execute, files, health, sessions
from executor.settings import ExecutorSettings

logger = logging.getLogger(__name__)

# Routes anyone may call: health checks come from load balancers without the token.
PUBLIC_PATHS = frozenset({"/health"})
_REQUEST_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


class MethodNotAllowed(InvalidRequest):
    status = 405
    code = "method_not_allowed"


def create_app(settings: ExecutorSettings, *, service: Executor | None = None) -> FastAPI:
    """Build the internal API.

    Without `service`, the app builds an `ExecutorService` from `settings` and owns it: the
    lifespan starts it and closes it. An injected service is owned, started and closed by the
    caller.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if service is not None:
            app.state.executor = service
            yield
            return
        from executor.service import ExecutorService

        owned = ExecutorService(settings)
        try:
            await owned.start()
            app.state.executor = owned
            yield
        finally:
            await owned.aclose()

    app = FastAPI(
        title="codeproxy executor",
        summary="Internal API of the execution service.",
        lifespan=lifespan,
        # The schema would be the one route reachable without the token besides /health.
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    for module in (execute, sessions, files, health):
        app.include_router(module.router)

    async def handle(request: Request, exc: Exception) -> Response:
        return _render(_translate(exc))

    app.add_exception_handler(ExecutorError, handle)
    app.add_exception_handler(RequestValidationError, handle)
    app.add_exception_handler(StarletteHTTPException, handle)
    app.add_exception_handler(ClientDisconnect, handle)
    token = settings.internal_token.get_secret_value() if settings.internal_token else None
    app.add_middleware(InternalAuthMiddleware, token=token)
    app.add_middleware(RequestIdMiddleware)
    return app


class InternalAuthMiddleware:
    """Refuses every request but /health without the right `Internal-Auth-Token` header.

    It runs before routing and body parsing, so nothing about routes or bodies is revealed to
    a caller without the token. With no token configured (loopback only, see `server.serve`)
    every request passes.
    """

    def __init__(self, app: ASGIApp, *, token: str | None) -> None:
        self.app = app
        self._token = token.encode() if token is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._token is None or scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        given = Headers(scope=scope).get(TOKEN_HEADER, "").encode()
        if not hmac.compare_digest(given, self._token):
            message = f"Missing or invalid {TOKEN_HEADER} header."
            await _render(Unauthorized(message))(scope, receive, send)
            return
        await self.app(scope, receive, send)


class RequestIdMiddleware:
    """Sends `x-request-id` on every response (the proxy's own id when it passed one).

    It also answers an unexpected exception with the 500 error JSON, so that response carries
    the id too.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = Headers(scope=scope).get("x-request-id", "")
        request_id = incoming if _REQUEST_ID.fullmatch(incoming) else _new_request_id()
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
            await _render(_translate(exc))(scope, receive, send_with_id)


def _new_request_id() -> str:
    return "req_" + secrets.token_hex(12)


def _translate(exc: BaseException) -> ExecutorError:
    """Any exception as an ExecutorError, so every error reaches the client in one shape."""
    if isinstance(exc, ExecutorError):
        return exc
    if isinstance(exc, RequestValidationError):
        return _validation_error(exc)
    if isinstance(exc, StarletteHTTPException):
        if exc.status_code == 404:
            return NotFound("Unknown request URL. Please check the URL and method.")
        if exc.status_code == 405:
            return MethodNotAllowed("Method not allowed for this URL.")
        if exc.status_code < 500:
            return InvalidRequest(str(exc.detail))
    if isinstance(exc, ClientDisconnect):
        return InvalidRequest("The client disconnected before the request body was complete.")
    logger.error("unexpected error", exc_info=exc)
    return ExecutorError("The executor had an error while processing your request.")


def _validation_error(exc: RequestValidationError) -> InvalidRequest:
    errors: list[Any] = list(exc.errors())
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "header")]
    param = ".".join(loc) or None
    kind = first.get("type")
    if kind == "json_invalid":
        return InvalidRequest("The request body is not valid JSON.")
    if kind == "missing":
        return InvalidRequest(f"Missing required parameter: '{param}'.", param=param)
    return InvalidRequest(f"Invalid '{param}': {first.get('msg', 'invalid value')}.", param=param)


def _render(exc: ExecutorError) -> Response:
    headers = {}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    return JSONResponse(exc.to_body(), status_code=exc.status, headers=headers)
