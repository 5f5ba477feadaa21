"""ASGI middleware: a request id on every response, and a last-resort error answer."""

import secrets

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proxy.errors import render, translate


class RequestIdMiddleware:
    """Adds `x-request-id` to every HTTP response (the SDK exposes it as `request_id`).

    It also answers an unexpected exception with OpenAI's 500 error JSON, so even that
    response carries the id; the exception is logged by `translate`.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = "req_" + secrets.token_hex(12)
        scope.setdefault("state", {})["request_id"] = request_id
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
            await render(translate(exc))(scope, receive, send_with_id)
