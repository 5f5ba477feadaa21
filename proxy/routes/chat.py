"""Chat Completions: passed through, or run through the code-interpreter loop."""

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

from proxy.chat import start_turn
from proxy.deps import get_services, get_tenant
from proxy.errors import InvalidRequestError, invalid_json
from proxy.forwarded import forwarded
from proxy.jsonutil import JSONResponse, loads
from proxy.policy import TRANSCRIPT_HEADER, resolve
from proxy.streaming import guarded
from proxy.upstream import Upstream

router = APIRouter(tags=["chat"])

SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


async def read_json(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = loads(raw)
    except ValueError:
        raise invalid_json() from None
    if not isinstance(body, dict):
        raise InvalidRequestError("The request body must be a JSON object.", code="invalid_json")
    return body


def check_chat(body: dict[str, Any]) -> None:
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise InvalidRequestError(
            "Missing required parameter: 'model'.", param="model", code="missing_required_parameter"
        )
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequestError(
            "Invalid 'messages': expected a non-empty array of messages.", param="messages"
        )
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidRequestError(
                f"Invalid 'messages[{i}]': expected an object with a 'role'.",
                param=f"messages[{i}]",
            )


async def create_chat_completion(request: Request) -> Response:
    """Create a chat completion; with a `code_interpreter` tool, code runs server-side."""
    services = await get_services(request)
    tenant = await get_tenant(request, services)
    body = await read_json(request)
    check_chat(body)
    plan = resolve(body, services.settings, request.headers.get(TRANSCRIPT_HEADER))
    stream = bool(body.get("stream"))
    if plan is None:
        if stream:
            return await _stream_response(_relay(services.upstream, body))
        return Response(
            await services.upstream.post_raw("chat/completions", body),
            media_type="application/json",
        )
    if body.get("n") not in (None, 1):
        raise InvalidRequestError(
            "'n' greater than 1 is not supported together with the code interpreter: each "
            "choice would run its own code.",
            param="n",
        )
    who = forwarded(request.headers, body, services.settings)
    loop = await start_turn(services, tenant.id, body, plan, str(request.base_url), who)
    if stream:
        return await _stream_response(loop.stream())
    return JSONResponse(await loop.complete())


# The hottest route is a plain Starlette route: FastAPI's per-request dependency solving
# would cost a third of the proxy's time on a passed-through completion.
router.add_route("/chat/completions", create_chat_completion, methods=["POST"])


async def _relay(upstream: Upstream, body: dict[str, Any]) -> AsyncIterator[bytes]:
    async with upstream.stream("chat/completions", body) as response:
        async for chunk in response.iter_any():
            yield chunk


async def _stream_response(events: AsyncIterator[bytes]) -> StreamingResponse:
    """Start streaming only once the first bytes exist, so early errors get a real status."""
    first = await anext(events, b"")
    return StreamingResponse(
        guarded(first, events), media_type="text/event-stream", headers=SSE_HEADERS
    )
