"""The code-interpreter loop of one chat completion, streaming or not.

The model gets a `code_interpreter` function. Each round calls the upstream; calls of that
function run in the sandbox and their results go back to the model; the loop ends when the
model answers without calling it (or calls one of the client's own functions, which goes
back to the client as a normal `tool_calls` turn). The client sees one ordinary completion
whose `usage` sums every upstream call.
"""

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from executor.errors import InvalidRequest as ExecutorInvalidRequest
from proxy.coderunner import CodeRunner, Run
from proxy.errors import APIError, InvalidRequestError, translate
from proxy.ids import new_id
from proxy.interpreter import (
    TOOL,
    TOOL_NAME,
    Plan,
    add_system_note,
    parse_arguments,
    system_note,
    tool_result,
)
from proxy.settings import Settings
from proxy.streaming import DONE, frame, read_events, with_keepalive
from proxy.upstream import Upstream

# Fields the loop owns in each upstream request.
_OWNED = ("messages", "tools", "tool_choice", "stream", "stream_options", "parallel_tool_calls")


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


class ChatLoop:
    """One chat completion with the interpreter on."""

    def __init__(
        self,
        *,
        settings: Settings,
        upstream: Upstream,
        runner: CodeRunner,
        body: dict[str, Any],
        plan: Plan,
        render_run: Callable[[Run], str] | None = None,
    ) -> None:
        self.settings = settings
        self.upstream = upstream
        self.runner = runner
        self.body = body
        self.plan = plan
        self.render_run = render_run
        self.messages = add_system_note(list(body["messages"]), system_note(runner.pending_files))
        self.usage: dict[str, Any] = {}
        self.id = new_id("chatcmpl-", 29)
        self.created = int(time.time())
        self.model: str = body.get("model", "")

    @property
    def ran_code(self) -> bool:
        return bool(self.runner.runs)

    def _request(self, round_no: int, *, stream: bool) -> dict[str, Any]:
        req = {k: v for k, v in self.body.items() if k not in _OWNED}
        req["messages"] = self.messages
        final = round_no >= self.settings.max_rounds
        tools = self.plan.client_tools + ([] if final else [TOOL])
        if tools:
            req["tools"] = tools
            req["tool_choice"] = self._tool_choice(round_no, final)
            if "parallel_tool_calls" in self.body:
                req["parallel_tool_calls"] = self.body["parallel_tool_calls"]
        if stream:
            req["stream"] = True
            req["stream_options"] = {
                **(self.body.get("stream_options") or {}),
                "include_usage": True,
            }
        return req

    def _tool_choice(self, round_no: int, final: bool) -> Any:
        choice = self.body.get("tool_choice", "auto")
        names_ours = isinstance(choice, dict) and (
            choice.get("type") == "code_interpreter"
            or (choice.get("function") or {}).get("name") == TOOL_NAME
        )
        if choice == "none":
            return "none"
        if final or round_no > 0:
            # Forcing a tool again after it ran would loop until the round limit.
            return "auto" if (names_ours or choice == "required") else choice
        if names_ours:
            return {"type": "function", "function": {"name": TOOL_NAME}}
        return choice

    async def _execute(self, call: dict[str, Any]) -> tuple[str, Run | None]:
        """Run one call; a problem the model caused comes back to it as the tool result."""
        try:
            code, language = parse_arguments(call["function"].get("arguments") or "")
            run = await self.runner.run(code, language)
        except (InvalidRequestError, ExecutorInvalidRequest) as exc:
            return f"[error] {exc}", None
        text = tool_result(
            run.result,
            saved_files=[(f.path or f.filename, f.bytes) for f in run.files],
            images=len(run.images),
            limit=self.settings.tool_result_max_chars,
        )
        return text, run

    def _answer_calls(self, content: str | None, ours: list[dict[str, Any]]) -> None:
        self.messages.append({"role": "assistant", "content": content, "tool_calls": ours})

    def _extra(self) -> dict[str, Any]:
        return {
            "code_interpreter": {
                "container_id": self.runner.session_id,
                "executions": [run.public() for run in self.runner.runs],
            }
        }

    def _mark_side_effects(self, exc: BaseException) -> APIError:
        err = translate(exc)
        if self.ran_code:
            err.headers["x-should-retry"] = "false"
        return err

    # Non-streaming

    async def complete(self) -> dict[str, Any]:
        try:
            return await self._complete()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise self._mark_side_effects(exc) from exc

    async def _complete(self) -> dict[str, Any]:
        visible: list[str] = []
        for round_no in range(self.settings.max_rounds + 1):
            response = await self.upstream.post(
                "chat/completions", self._request(round_no, stream=False)
            )
            add_usage(self.usage, response.get("usage"))
            choices = response.get("choices") or [{}]
            message = choices[0].get("message") or {}
            ours, theirs = split_calls(message.get("tool_calls"))
            if message.get("content"):
                visible.append(message["content"])
            if not ours or round_no == self.settings.max_rounds:
                return self._final(response, visible, theirs)
            self._answer_calls(message.get("content"), ours)
            for call in ours:
                text, run = await self._execute(call)
                self.messages.append({"role": "tool", "tool_call_id": call["id"], "content": text})
                if run is not None and self.render_run is not None:
                    visible.append(self.render_run(run))
        raise AssertionError("unreachable: the last round has no interpreter")

    def _final(
        self, response: dict[str, Any], visible: list[str], theirs: list[dict[str, Any]]
    ) -> dict[str, Any]:
        choice = dict((response.get("choices") or [{}])[0])
        message = dict(choice.get("message") or {"role": "assistant"})
        message["content"] = "\n\n".join(v for v in visible if v) or None
        if theirs:
            message["tool_calls"] = theirs
            choice["finish_reason"] = "tool_calls"
        else:
            message.pop("tool_calls", None)
            if choice.get("finish_reason") == "tool_calls":
                choice["finish_reason"] = "stop"
        choice["message"] = message
        choice["index"] = 0
        return {
            **response,
            "id": self.id,
            "created": self.created,
            "choices": [choice],
            "usage": self.usage or response.get("usage"),
            **self._extra(),
        }

    # Streaming

    async def stream(self) -> AsyncIterator[bytes]:
        """SSE bytes; an error before the first byte is raised, later ones go in-band."""
        try:
            async for chunk in self._stream():
                yield chunk
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise self._mark_side_effects(exc) from exc

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return frame(
            {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "system_fingerprint": None,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
                "usage": None,
            }
        )

    async def _stream(self) -> AsyncIterator[bytes]:
        text = _VisibleText(self._chunk)
        for round_no in range(self.settings.max_rounds + 1):
            calls = _CallAccumulator()
            finish: str | None = None
            content: list[str] = []
            async with self.upstream.stream(
                "chat/completions", self._request(round_no, stream=True)
            ) as response:
                async for event in read_events(response):
                    add_usage(self.usage, event.get("usage"))
                    if event.get("model"):
                        self.model = event["model"]
                    for choice in event.get("choices") or []:
                        if choice.get("index", 0) != 0:
                            continue
                        delta = choice.get("delta") or {}
                        finish = choice.get("finish_reason") or finish
                        if delta.get("content"):
                            content.append(delta["content"])
                            for out in text.add(delta["content"]):
                                yield out
                        if delta.get("refusal"):
                            for out in text.delta({"refusal": delta["refusal"]}):
                                yield out
                        calls.add(delta.get("tool_calls"))
            text.end_piece()
            ours, theirs = split_calls(calls.calls())
            if not ours or round_no == self.settings.max_rounds:
                for out in self._stream_end(text, theirs, finish):
                    yield out
                return
            self._answer_calls("".join(content) or None, ours)
            for call in ours:
                task = asyncio.ensure_future(self._execute(call))
                async for beat in with_keepalive(task, self.settings.keepalive_interval):
                    yield beat
                result_text, run = task.result()
                self.messages.append(
                    {"role": "tool", "tool_call_id": call["id"], "content": result_text}
                )
                if run is not None and self.render_run is not None:
                    for out in text.add(self.render_run(run)):
                        yield out
                    text.end_piece()

    def _stream_end(
        self, text: "_VisibleText", theirs: list[dict[str, Any]], finish: str | None
    ) -> list[bytes]:
        out = list(text.start())
        for index, call in enumerate(theirs):
            out.append(
                self._chunk(
                    {
                        "tool_calls": [
                            {
                                "index": index,
                                "id": call["id"],
                                "type": "function",
                                "function": {
                                    "name": call["function"]["name"],
                                    "arguments": call["function"]["arguments"],
                                },
                            }
                        ]
                    }
                )
            )
        if theirs:
            finish = "tool_calls"
        elif finish in (None, "tool_calls"):
            finish = "stop"
        out.append(self._chunk({}, finish))
        if (self.body.get("stream_options") or {}).get("include_usage"):
            out.append(
                frame(
                    {
                        "id": self.id,
                        "object": "chat.completion.chunk",
                        "created": self.created,
                        "model": self.model,
                        "system_fingerprint": None,
                        "choices": [],
                        "usage": self.usage or None,
                    }
                )
            )
        out.append(DONE)
        return out


def split_calls(
    calls: list[dict[str, Any]] | None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(calls of the interpreter, calls of the client's functions)."""
    ours: list[dict[str, Any]] = []
    theirs: list[dict[str, Any]] = []
    for call in calls or []:
        name = (call.get("function") or {}).get("name")
        (ours if name == TOOL_NAME else theirs).append(call)
    return ours, theirs


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


class _VisibleText:
    """The visible content of a streamed reply: role once, pieces separated by a blank line."""

    def __init__(self, chunk: Callable[..., bytes]) -> None:
        self._chunk = chunk
        self._started = False
        self._pieces = 0
        self._in_piece = False

    def start(self) -> list[bytes]:
        if self._started:
            return []
        self._started = True
        return [self._chunk({"role": "assistant", "content": "", "refusal": None})]

    def delta(self, delta: dict[str, Any]) -> list[bytes]:
        return [*self.start(), self._chunk(delta)]

    def add(self, text: str) -> list[bytes]:
        out = self.start()
        if not self._in_piece:
            if self._pieces:
                text = "\n\n" + text
            self._pieces += 1
            self._in_piece = True
        out.append(self._chunk({"content": text}))
        return out

    def end_piece(self) -> None:
        self._in_piece = False
