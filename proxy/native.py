"""The upstream's own `/responses`, behind the engine's `Model` seam, and choosing it.

`ResponsesModel` speaks chat-completions shapes to the engine like `ChatCompletionsModel`, and
the Responses API to the upstream: messages become input items (an assistant's `tool_calls`
become `function_call` items, `tool` messages `function_call_output` items), the interpreter
stays a function tool this service runs, `response.output_text.delta` becomes `TextDelta`, and
`function_call` output items come back as chat `tool_calls`. Nothing is stored upstream
(`store: false`): the conversation lives here.

`model_for` picks the model: the setting `upstream_responses` forces `native` or `chat`; in
`auto`, the first Responses call tries `/responses` and falls back to chat completions if the
upstream does not serve it, and the answer is remembered for the life of the process.
"""

import logging
from collections.abc import AsyncIterator
from typing import Any

from proxy.errors import UpstreamError
from proxy.events import RefusalDelta, TextDelta
from proxy.model import ChatCompletionsModel, Model, ModelEvent, ModelRequest, Opened, Reply
from proxy.settings import Settings
from proxy.streaming import read_events
from proxy.upstream import Upstream

logger = logging.getLogger(__name__)

# Chat request fields under another name, or another shape, in a Responses request.
_RENAMED = {"max_completion_tokens": "max_output_tokens", "max_tokens": "max_output_tokens"}


def model_for(upstream: Upstream, settings: Settings) -> Model:
    """The model a Responses request talks to (see the module docstring)."""
    if settings.upstream_responses == "chat":
        return ChatCompletionsModel(upstream)
    if settings.upstream_responses == "native":
        return ResponsesModel(upstream)
    return AutoModel(upstream)


def usage_to_chat(usage: Any) -> dict[str, Any] | None:
    """Responses usage as chat usage, which the engine sums."""
    if not isinstance(usage, dict):
        return None
    out: dict[str, Any] = {
        "prompt_tokens": usage.get("input_tokens", 0),
        "completion_tokens": usage.get("output_tokens", 0),
        "total_tokens": usage.get("total_tokens", 0),
    }
    cached = (usage.get("input_tokens_details") or {}).get("cached_tokens")
    if cached is not None:
        out["prompt_tokens_details"] = {"cached_tokens": cached}
    reasoning = (usage.get("output_tokens_details") or {}).get("reasoning_tokens")
    if reasoning is not None:
        out["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return out


def to_input(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat messages as Responses input items."""
    items: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        if role == "tool":
            items.append(
                {
                    "type": "function_call_output",
                    "call_id": message.get("tool_call_id"),
                    "output": _text(message.get("content")),
                }
            )
            continue
        content = message.get("content")
        if role == "assistant":
            if content:
                items.append({"role": "assistant", "content": _text(content)})
            for call in message.get("tool_calls") or []:
                function = call.get("function") or {}
                items.append(
                    {
                        "type": "function_call",
                        "call_id": call.get("id"),
                        "name": function.get("name"),
                        "arguments": function.get("arguments", ""),
                    }
                )
            continue
        items.append({"role": role, "content": _parts(content)})
    return items


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def _parts(content: Any) -> Any:
    if not isinstance(content, list):
        return content
    parts: list[dict[str, Any]] = []
    for part in content:
        kind = part.get("type")
        if kind == "text":
            parts.append({"type": "input_text", "text": part.get("text", "")})
        elif kind == "image_url":
            image = part.get("image_url") or {}
            parts.append(
                {
                    "type": "input_image",
                    "image_url": image.get("url"),
                    "detail": image.get("detail", "auto"),
                }
            )
        elif kind == "file":
            parts.append({"type": "input_file", **(part.get("file") or {})})
    return parts


def _tool_choice(choice: Any) -> Any:
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "function", "name": (choice.get("function") or {}).get("name")}
    return choice


class ResponsesModel:
    """The upstream's `/responses`, streamed or not as the request says."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream

    def body(self, request: ModelRequest) -> dict[str, Any]:
        """The Responses request for one round."""
        body: dict[str, Any] = {}
        text: dict[str, Any] = {}
        for key, value in request.options.items():
            if key == "response_format":
                text["format"] = _format(value)
            elif key == "verbosity":
                text["verbosity"] = value
            elif key == "reasoning_effort":
                body["reasoning"] = {"effort": value}
            else:
                body[_RENAMED.get(key, key)] = value
        if text:
            body["text"] = text
        body["input"] = to_input(request.messages)
        body["store"] = False
        if request.tools:
            body["tools"] = [
                {"type": "function", **tool["function"]}
                for tool in request.tools
                if tool.get("type") == "function"
            ]
            body["tool_choice"] = _tool_choice(request.tool_choice)
            if request.parallel_tool_calls is not None:
                body["parallel_tool_calls"] = request.parallel_tool_calls
        if request.stream:
            body["stream"] = True
        return body

    async def reply(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        """One call; the answer's function calls come back as chat tool calls."""
        if not request.stream:
            response = await self.upstream.post("responses", self.body(request))
            yield Opened(response.get("model"))
            reply = _reply(response)
            if reply.content:
                yield TextDelta(reply.content)
            if reply.refusal:
                yield RefusalDelta(reply.refusal)
            yield reply
            return
        final: dict[str, Any] | None = None
        opened = False
        async with self.upstream.stream("responses", self.body(request)) as body:
            async for event in read_events(body):
                kind = event.get("type")
                if not opened and kind == "response.created":
                    opened = True
                    yield Opened((event.get("response") or {}).get("model"))
                elif kind == "response.output_text.delta":
                    yield TextDelta(event.get("delta", ""))
                elif kind == "response.refusal.delta":
                    yield RefusalDelta(event.get("delta", ""))
                elif kind in ("response.completed", "response.incomplete"):
                    final = event.get("response") or {}
                elif kind == "response.failed":
                    raise _failed((event.get("response") or {}).get("error"))
                elif kind == "error":
                    raise _failed(event)
        if not opened:
            yield Opened(None)
        if final is None:
            raise _failed({"message": "The upstream's stream ended without a response."})
        reply = _reply(final)
        reply.raw = None
        yield reply


def _format(response_format: Any) -> Any:
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        return {"type": "json_schema", **(response_format.get("json_schema") or {})}
    return response_format


def _reply(response: dict[str, Any]) -> Reply:
    text: list[str] = []
    refusal: list[str] = []
    calls: list[dict[str, Any]] = []
    for item in response.get("output") or []:
        if item.get("type") == "message":
            for part in item.get("content") or []:
                if part.get("type") == "output_text":
                    text.append(part.get("text", ""))
                elif part.get("type") == "refusal":
                    refusal.append(part.get("refusal", ""))
        elif item.get("type") == "function_call":
            calls.append(
                {
                    "id": item.get("call_id"),
                    "type": "function",
                    "function": {"name": item.get("name"), "arguments": item.get("arguments")},
                }
            )
    reason = (response.get("incomplete_details") or {}).get("reason")
    finish = (
        "length"
        if reason == "max_output_tokens"
        else "content_filter"
        if reason == "content_filter"
        else "tool_calls"
        if calls
        else "stop"
    )
    return Reply(
        "".join(text) or None,
        "".join(refusal) or None,
        calls,
        finish,
        usage_to_chat(response.get("usage")),
        response,
    )


def _failed(error: Any) -> UpstreamError:
    error = error if isinstance(error, dict) else {}
    return UpstreamError(
        500,
        {
            "error": {
                "message": error.get("message") or "The upstream model failed.",
                "type": "server_error",
                "param": error.get("param"),
                "code": error.get("code"),
            }
        },
        {},
    )


def _unsupported(exc: UpstreamError) -> bool:
    """Whether an error says the upstream has no `/responses` (rather than, say, no model)."""
    if exc.upstream_status not in (404, 405, 501):
        return False
    error = exc.upstream_body.get("error")
    return not (isinstance(error, dict) and error.get("code") == "model_not_found")


class AutoModel:
    """`/responses` if the upstream serves it, else chat completions; found out once."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.native = ResponsesModel(upstream)
        self.chat = ChatCompletionsModel(upstream)

    async def reply(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        if self.upstream.serves_responses is None:
            attempt = self.native.reply(request)
            try:
                first = await anext(attempt)
            except UpstreamError as exc:
                if not _unsupported(exc):
                    raise
                logger.info("the upstream has no /responses: bridging to chat completions")
                self.upstream.serves_responses = False
            else:
                self.upstream.serves_responses = True
                yield first
                async for event in attempt:
                    yield event
                return
        model: Model = self.native if self.upstream.serves_responses else self.chat
        async for event in model.reply(request):
            yield event
