"""The one SSE encoder of the API service, and the reader of the upstream's SSE.

Chat Completions frames are `data: <json>\\n\\n` with no `event:` line, ended by
`data: [DONE]`. Heartbeats are comment lines. An error after the first byte is one in-band
`data: {"error": …}` frame, after which the stream ends.
"""

import asyncio
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from proxy.errors import UpstreamError, translate
from proxy.jsonutil import dumps, loads

DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keepalive\n\n"


def frame(data: Any) -> bytes:
    return b"data: " + dumps(data) + b"\n\n"


def event_frame(event: str, data: Any) -> bytes:
    """A frame whose `event:` line says what the data is."""
    return b"event: " + event.encode() + b"\ndata: " + dumps(data) + b"\n\n"


async def read_events(body: AsyncIterable[bytes]) -> AsyncIterator[dict[str, Any]]:
    """The JSON objects of an upstream SSE stream (read line by line), until `[DONE]`."""
    data: list[str] = []
    async for raw in body:
        line = raw.decode().rstrip("\r\n")
        if line.startswith("data:"):
            data.append(line[5:].lstrip(" "))
            continue
        if line or not data:
            continue  # comments, `event:`/`id:` fields, blank lines between events
        payload = "\n".join(data)
        data.clear()
        if payload == "[DONE]":
            return
        event = loads(payload)
        if isinstance(event, dict) and isinstance(event.get("error"), dict):
            raise UpstreamError(500, event, {})
        yield event


async def guarded(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Send `first`, then `rest`; an error after the first byte becomes one error frame."""
    yield first
    try:
        async for chunk in rest:
            yield chunk
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        yield frame(translate(exc).body())
