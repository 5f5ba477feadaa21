"""The engine's view of the upstream model: one call per round, behind a narrow interface.

The engine speaks chat-completions shapes internally (messages, function tools, tool calls);
that is the lingua franca of every OpenAI-compatible upstream. A `Model` turns one
`ModelRequest` into events: `Opened` once the upstream answers, the message's `TextDelta` /
`RefusalDelta` pieces as they arrive, then exactly one `Reply` with the whole message.

`ChatCompletionsModel` is the bridge to `/chat/completions`. An adapter for an upstream that
serves `/responses` natively would implement the same `reply`: messages become input items
(assistant `tool_calls` → `function_call` items, `tool` messages → `function_call_output`),
the interpreter stays a function tool, `response.output_text.delta` becomes `TextDelta`, and
its `function_call` items come back in `Reply.tool_calls` in chat form.
"""

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from proxy.events import RefusalDelta, TextDelta
from proxy.streaming import read_events
from proxy.upstream import Upstream

# The fields of an upstream chat request that the engine sets itself.
OWNED = ("messages", "tools", "tool_choice", "stream", "stream_options", "parallel_tool_calls")


@dataclass(slots=True)
class ModelRequest:
    """One upstream call."""

    # Every other field of the request, passed on untouched (model, temperature,
    # response_format, metadata, vendor fields, …), in the client's order.
    options: dict[str, Any]
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    tool_choice: Any
    parallel_tool_calls: bool | None
    stream: bool
    # The client's own stream options; usage is always asked for, to sum it.
    stream_options: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Opened:
    """The upstream has begun answering."""

    model: str | None


@dataclass(slots=True)
class Reply:
    """The upstream's whole answer to one call."""

    content: str | None
    refusal: str | None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    raw: dict[str, Any] | None = None


ModelEvent = Opened | TextDelta | RefusalDelta | Reply


class Model(Protocol):
    """An upstream model the engine can call."""

    def reply(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        """Opened, the message's deltas, then one Reply. Errors are raised as APIErrors."""
        ...


def add_usage(total: dict[str, Any], usage: Any) -> None:
    """Sum a usage object into `total`, nested detail counts included."""
    if not isinstance(usage, dict):
        return
    for key, value in usage.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            total[key] = total.get(key, 0) + value
        elif isinstance(value, dict):
            add_usage(total.setdefault(key, {}), value)


class ChatCompletionsModel:
    """The upstream's `/chat/completions`, streamed or not as the request says."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream

    def body(self, request: ModelRequest) -> dict[str, Any]:
        """The chat completions request: the client's own fields, then those the engine sets."""
        body = dict(request.options)
        body["messages"] = request.messages
        if request.tools:
            body["tools"] = request.tools
            body["tool_choice"] = request.tool_choice
            if request.parallel_tool_calls is not None:
                body["parallel_tool_calls"] = request.parallel_tool_calls
        if request.stream:
            body["stream"] = True
            body["stream_options"] = {**(request.stream_options or {}), "include_usage": True}
        return body

    async def reply(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        """One call; a streamed answer's tool calls are put together from their deltas."""
        if not request.stream:
            response = await self.upstream.post("chat/completions", self.body(request))
            choice = (response.get("choices") or [{}])[0]
            message = choice.get("message") or {}
            content, refusal = message.get("content"), message.get("refusal")
            yield Opened(response.get("model"))
            if content:
                yield TextDelta(content)
            if refusal:
                yield RefusalDelta(refusal)
            yield Reply(
                content,
                refusal,
                message.get("tool_calls") or [],
                choice.get("finish_reason"),
                response.get("usage"),
                response,
            )
            return
        calls = _CallAccumulator()
        usage: dict[str, Any] = {}
        text: list[str] = []
        refused: list[str] = []
        finish: str | None = None
        opened = False
        async with self.upstream.stream("chat/completions", self.body(request)) as response:
            async for event in read_events(response):
                if not opened:
                    opened = True
                    yield Opened(event.get("model"))
                add_usage(usage, event.get("usage"))
                for choice in event.get("choices") or []:
                    if choice.get("index", 0) != 0:
                        continue
                    delta = choice.get("delta") or {}
                    finish = choice.get("finish_reason") or finish
                    if delta.get("content"):
                        text.append(delta["content"])
                        yield TextDelta(delta["content"])
                    if delta.get("refusal"):
                        refused.append(delta["refusal"])
                        yield RefusalDelta(delta["refusal"])
                    calls.add(delta.get("tool_calls"))
        if not opened:
            yield Opened(None)
        yield Reply(
            "".join(text) or None,
            "".join(refused) or None,
            calls.calls(),
            finish,
            usage or None,
        )


class _CallAccumulator:
    """Rebuilds streamed tool calls from their deltas, by `index`."""

    def __init__(self) -> None:
        self._calls: dict[int, dict[str, Any]] = {}

    def add(self, deltas: Any) -> None:
        for delta in deltas or []:
            call = self._calls.setdefault(
                delta.get("index", 0),
                {"id": "", "type": "function", "function": {"name": "", "arguments": ""}},
            )
            if delta.get("id"):
                call["id"] = delta["id"]
            function = delta.get("function") or {}
            if function.get("name"):
                call["function"]["name"] += function["name"]
            if function.get("arguments"):
                call["function"]["arguments"] += function["arguments"]

    def calls(self) -> list[dict[str, Any]]:
        return [self._calls[i] for i in sorted(self._calls)]
