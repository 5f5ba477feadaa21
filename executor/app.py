"""The internal API of the execution service: app factory, lifespan, auth and error rendering.

Every error leaves as OpenAI's error JSON, rendered in one place (`_render`): the service's
`ExecutorError`s, FastAPI's validation errors, Starlette's 404/405, and anything unexpected
(a 500 whose details are only logged).
"""

import contextlib
import hmac
import logging
import math
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from codeproxy.metrics import HttpMetrics, MetricsMiddleware
from codeproxy.metrics import render as render_metrics
from codeproxy.web import (
    METHOD_NOT_ALLOWED,
    UNKNOWN_URL,
    RequestIdMiddleware,
    describe_validation_errors,
)
from executor.api import TOKEN_HEADER, Executor
from executor.errors import ExecutorError, InvalidRequest, NotFound, Unauthorized
from executor.routes import execute, files, health, sessions
from executor.settings import ExecutorSettings

logger = logging.getLogger(__name__)

# Routes anyone may call: health checks come from load balancers, scrapes from Prometheus,
# without the token. Neither reveals more than counts and the node's name.
PUBLIC_PATHS = frozenset({"/health", "/metrics"})


class MethodNotAllowed(InvalidRequest):
    status = 405
    code = "method_not_allowed"


def create_app(
    settings: ExecutorSettings,
    *,
    service: Executor | None = None,
    registry: CollectorRegistry | None = None,
) -> FastAPI:
    """Build the internal API.

    Without `service`, the app builds an `ExecutorService` from `settings` and owns it: the
    lifespan starts it and closes it. An injected service is owned, started and closed by the
    caller. `/metrics` shows `registry` (an owned service records its metrics there).
    """
    registry = registry if registry is not None else CollectorRegistry()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if service is not None:
            app.state.executor = service
            yield
            return
        from executor.service import ExecutorService

        owned = ExecutorService(settings, registry=registry)
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
    app.add_route("/metrics", lambda _request: render_metrics(registry), include_in_schema=False)
    token = settings.internal_token.get_secret_value() if settings.internal_token else None
    app.add_middleware(InternalAuthMiddleware, token=token)
    app.add_middleware(MetricsMiddleware, metrics=HttpMetrics(registry), added_latency=False)
    app.add_middleware(
        RequestIdMiddleware, render=lambda exc: _render(_translate(exc)), accept_incoming=True
    )
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


def _translate(exc: BaseException) -> ExecutorError:
    """Any exception as an ExecutorError, so every error reaches the client in one shape."""
    if isinstance(exc, ExecutorError):
        return exc
    if isinstance(exc, RequestValidationError):
        return _validation_error(exc)
    if isinstance(exc, StarletteHTTPException):
        if exc.status_code == 404:
            return NotFound(UNKNOWN_URL)
        if exc.status_code == 405:
            return MethodNotAllowed(METHOD_NOT_ALLOWED)
        if exc.status_code < 500:
            return InvalidRequest(str(exc.detail))
    if isinstance(exc, ClientDisconnect):
        return InvalidRequest("The client disconnected before the request body was complete.")
    logger.error("unexpected error", exc_info=exc)
    return ExecutorError("The executor had an error while processing your request.")


def _validation_error(exc: RequestValidationError) -> InvalidRequest:
    _code, param, message = describe_validation_errors(exc.errors())
    return InvalidRequest(message, param=param)


def _render(exc: ExecutorError) -> Response:
    headers = {}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    return JSONResponse(exc.to_body(), status_code=exc.status, headers=headers)
