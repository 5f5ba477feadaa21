"""A scripted OpenAI-compatible upstream for tests: answers from a script, records requests.

Each chat completion request takes the next scripted reply. A reply is a `chat.completion`
dict (sent as JSON, or as `chat.completion.chunk` SSE when the request streams), an `Error`,
or a callable that builds one of those from the request body.
"""

import asyncio
import copy
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from proxy.jsonutil import dumps

_ids = itertools.count(1)


@dataclass
class Error:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Cut:
    """Stream `reply`, but close the connection after `chunks` chunks (no end, no [DONE])."""

    reply: dict[str, Any]
    chunks: int


Reply = dict[str, Any] | Error | Cut | Callable[[dict[str, Any]], "dict[str, Any] | Error"]


def completion(
    content: str | None = None,
    *,
    tool_calls: list[dict[str, Any]] | None = None,
    model: str = "gpt-test",
    prompt_tokens: int = 10,
    completion_tokens: int = 5,
    refusal: str | None = None,
) -> dict[str, Any]:
    """A chat.completion as OpenAI sends it."""
    message: dict[str, Any] = {
        "role": "assistant",
        "content": content,
        "refusal": refusal,
        "annotations": [],
    }
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": f"chatcmpl-up{next(_ids)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": "tool_calls" if tool_calls else "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
        "service_tier": "default",
        "system_fingerprint": None,
    }


def tool_call(name: str, arguments: str, call_id: str | None = None) -> dict[str, Any]:
    return {
        "id": call_id or f"call_{next(_ids)}",
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


def code_call(code: str, language: str = "python", call_id: str | None = None) -> dict[str, Any]:
    """A call of the code-interpreter function the proxy gives the model."""
    return tool_call(
        "code_interpreter", dumps({"code": code, "language": language}).decode(), call_id
    )


def chunks_of(
    body: dict[str, Any], *, include_usage: bool, pieces: int = 3
) -> list[dict[str, Any]]:
    """Split a chat.completion into the chunks OpenAI would stream for it."""
    base = {k: body[k] for k in ("id", "created", "model", "service_tier", "system_fingerprint")}
    base["object"] = "chat.completion.chunk"
    choice = body["choices"][0]
    message = choice["message"]

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            **base,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            "usage": None,
        }

    out = [
        chunk(
            {
                "role": "assistant",
                "content": "" if message.get("tool_calls") is None else None,
                "refusal": None,
            }
        )
    ]
    if message.get("refusal"):
        out.append(chunk({"refusal": message["refusal"]}))
    text = message.get("content") or ""
    step = max(1, -(-len(text) // pieces)) if text else 1
    for i in range(0, len(text), step):
        out.append(chunk({"content": text[i : i + step]}))
    for index, call in enumerate(message.get("tool_calls") or []):
        out.append(
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": index,
                            "id": call["id"],
                            "type": "function",
                            "function": {"name": call["function"]["name"], "arguments": ""},
                        }
                    ]
                }
            )
        )
        args = call["function"]["arguments"]
        half = len(args) // 2
        for part in (args[:half], args[half:]):
            out.append(chunk({"tool_calls": [{"index": index, "function": {"arguments": part}}]}))
    out.append(chunk({}, choice["finish_reason"]))
    if include_usage:
        out.append({**base, "choices": [], "usage": body["usage"]})
    return out


class ScriptedUpstream:
    def __init__(self, models: list[str] | None = None) -> None:
        self.script: list[Reply] = []
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.models = models or ["gpt-test"]
        self.url = ""  # set once it is served
        # Many OpenAI-compatible servers list models but cannot retrieve one.
        self.retrievable = False
        # Seconds to wait before answering, to simulate a slow model.
        self.delay = 0.0
        # While set, every answer waits (a model still thinking, for as long as a test needs).
        self.hold = False
        # Answers every request once the script is empty (concurrent tests, whose requests
        # arrive in no fixed order, script by content instead).
        self.fallback: Reply | None = None
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
                Route("/v1/models/{model:path}", self._model, methods=["GET"]),
            ]
        )

    def push(self, *replies: Reply) -> None:
        self.script.extend(replies)

    async def _models(self, request: Request) -> Response:
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": 1700000000, "owned_by": "test"}
                    for m in self.models
                ],
            }
        )

    async def _model(self, request: Request) -> Response:
        model = request.path_params["model"]
        if self.retrievable and model in self.models:
            return JSONResponse(
                {"id": model, "object": "model", "created": 1700000000, "owned_by": "retrieved"}
            )
        error = {"message": "Not Found", "type": "invalid_request_error", "param": None}
        return JSONResponse({"error": {**error, "code": None}}, status_code=404)

    async def _chat(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append(copy.deepcopy(body))
        self.headers.append(dict(request.headers))
        if self.delay:
            await asyncio.sleep(self.delay)
        while self.hold:  # noqa: ASYNC110 (set from the test's thread, not this loop)
            await asyncio.sleep(0.01)
        if not self.script and self.fallback is not None:
            self.script.append(self.fallback)
        if not self.script:
            return JSONResponse(
                {
                    "error": {
                        "message": "script exhausted",
                        "type": "test",
                        "param": None,
                        "code": None,
                    }
                },
                status_code=500,
            )
        reply = self.script.pop(0)
        if callable(reply):
            reply = reply(body)
        if isinstance(reply, Error):
            return JSONResponse(reply.body, status_code=reply.status, headers=reply.headers)
        cut = None
        if isinstance(reply, Cut):
            reply, cut = reply.reply, reply.chunks
        if not body.get("stream"):
            return JSONResponse(reply)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        pieces = chunks_of(reply, include_usage=include_usage)

        async def sse() -> Any:
            for n, c in enumerate(pieces):
                if n == cut:
                    # An exception mid-body makes the server drop the connection.
                    raise ConnectionAbortedError("the scripted upstream hangs up")
                yield b"data: " + dumps(c) + b"\n\n"
            yield b"data: [DONE]\n\n"

        return StreamingResponse(sse(), media_type="text/event-stream")
