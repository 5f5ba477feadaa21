"""The code-interpreter loop of one chat completion, streaming or not.

The model gets a `code_interpreter` function. Each round calls the upstream; calls of that
function run in the sandbox and their results go back to the model; the loop ends when the
model answers without calling it (or calls one of the client's own functions, which goes
back to the client as a normal `tool_calls` turn). The client sees one ordinary completion
whose `usage` sums every upstream call. Visible pieces (the model's text, transcript blocks)
are joined by blank lines; `sandbox:/mnt/data/…` links in the model's text become real links.
"""

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

from executor.api import InvalidRequest as ExecutorInvalidRequest
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
from proxy.transcript import LinkRewriter, Transcript
from proxy.upstream import Upstream

# Fields the loop owns in each upstream request.
_OWNED = ("messages", "tools", "tool_choice", "stream", "stream_options", "parallel_tool_calls")

# One step of running a call: a visible piece (str), then the tool result and the run.
Step = str | tuple[str, Run | None]


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


async def _no_links(_path: str) -> str | None:
    return None


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
        history: list[dict[str, Any]] | None = None,
        note: str = "",
        transcript: Transcript | None = None,
        links: LinkRewriter | None = None,
        on_finish: Callable[["ChatLoop"], Awaitable[None]] | None = None,
    ) -> None:
        self.settings = settings
        self.upstream = upstream
        self.runner = runner
        self.body = body
        self.plan = plan
        self.transcript = transcript or Transcript("none", lambda _saved: "")
        self.links = links or LinkRewriter(_no_links)
        self.on_finish = on_finish
        system = system_note(runner.pending_files) + (f"\n{note}" if note else "")
        self.messages = add_system_note(list(history or body["messages"]), system)
        self._turn_start = len(self.messages)
        self.usage: dict[str, Any] = {}
        self.id = new_id("chatcmpl-", 29)
        self.created = int(time.time())
        self.model: str = body.get("model", "")
        # What this turn produced: the model's last text, the client's function calls, and
        # the exact visible content the client received.
        self.final_content: str | None = None
        self.client_calls: list[dict[str, Any]] = []
        self.visible_content = ""

    @property
    def ran_code(self) -> bool:
        return bool(self.runner.runs)

    @property
    def hidden(self) -> list[dict[str, Any]]:
        """The messages this turn added that the client never sees (code calls, results)."""
        return self.messages[self._turn_start :]

    def reply(self) -> dict[str, Any]:
        """The assistant message as the client received it."""
        message: dict[str, Any] = {"role": "assistant", "content": self.visible_content or None}
        if self.client_calls:
            message["tool_calls"] = self.client_calls
        return message

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

    async def _execute(self, call: dict[str, Any]) -> AsyncGenerator[Step, None]:
        """Run one call: yields the visible code piece, then (tool result text, run).

        A problem the model caused (bad arguments, unknown language) becomes the tool result.
        """
        try:
            code, language = parse_arguments(call["function"].get("arguments") or "")
        except InvalidRequestError as exc:
            yield f"[error] {exc}", None
            return
        yield self.transcript.code(code, language)
        try:
            run = await self.runner.run(code, language)
        except ExecutorInvalidRequest as exc:
            yield f"[error] {exc}", None
            return
        text = tool_result(
            run.result,
            saved_files=[(f.path or f.filename, f.bytes) for f in run.files],
            skipped_files=[f.note() for f in run.skipped],
            images=len(run.images),
            limit=self.settings.tool_result_max_chars,
        )
        yield text, run

    def _answer(self, call: dict[str, Any], text: str) -> None:
        self.messages.append({"role": "tool", "tool_call_id": call["id"], "content": text})

    async def _finish(
        self, content: str | None, theirs: list[dict[str, Any]], visible: str
    ) -> None:
        self.final_content = content
        self.client_calls = theirs
        self.visible_content = visible
        if self.on_finish is not None:
            await self.on_finish(self)

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
        pieces: list[str] = []
        for round_no in range(self.settings.max_rounds + 1):
            response = await self.upstream.post(
                "chat/completions", self._request(round_no, stream=False)
            )
            add_usage(self.usage, response.get("usage"))
            message = ((response.get("choices") or [{}])[0]).get("message") or {}
            content = message.get("content")
            ours, theirs = split_calls(message.get("tool_calls"))
            if content:
                pieces.append(await self.links.rewrite(content))
            if not ours or round_no == self.settings.max_rounds:
                await self._finish(content, theirs, "\n\n".join(p for p in pieces if p))
                return self._final(response)
            self.messages.append({"role": "assistant", "content": content, "tool_calls": ours})
            for call in ours:
                async for step in self._execute(call):
                    if isinstance(step, str):
                        pieces.append(step)
                        continue
                    text, run = step
                    self._answer(call, text)
                    if run is not None:
                        pieces.append(self.transcript.result(run))
        raise AssertionError("unreachable: the last round has no interpreter")

    def _final(self, response: dict[str, Any]) -> dict[str, Any]:
        choice = dict((response.get("choices") or [{}])[0])
        message = dict(choice.get("message") or {"role": "assistant"})
        message["content"] = self.visible_content or None
        if self.client_calls:
            message["tool_calls"] = self.client_calls
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
                            for out in text.add(await self.links.feed(delta["content"])):
                                yield out
                        if delta.get("refusal"):
                            for out in text.delta({"refusal": delta["refusal"]}):
                                yield out
                        calls.add(delta.get("tool_calls"))
            for out in text.add(await self.links.flush()):
                yield out
            text.end_piece()
            said = "".join(content) or None
            ours, theirs = split_calls(calls.calls())
            if not ours or round_no == self.settings.max_rounds:
                await self._finish(said, theirs, text.sent)
                for out in self._stream_end(text, theirs, finish):
                    yield out
                return
            self.messages.append({"role": "assistant", "content": said, "tool_calls": ours})
            for call in ours:
                async for step in self._execute_with_keepalive(call):
                    if isinstance(step, bytes):
                        yield step
                    elif isinstance(step, str):
                        for out in text.piece(step):
                            yield out
                    else:
                        result_text, run = step
                        self._answer(call, result_text)
                        if run is not None:
                            for out in text.piece(self.transcript.result(run)):
                                yield out

    async def _execute_with_keepalive(self, call: dict[str, Any]) -> AsyncIterator[bytes | Step]:
        """`_execute`'s steps, with heartbeats while code runs."""
        steps = self._execute(call)
        try:
            while True:
                task = asyncio.ensure_future(anext(steps, None))
                async for beat in with_keepalive(task, self.settings.keepalive_interval):
                    yield beat
                step = task.result()
                if step is None:
                    return
                yield step
        finally:
            await steps.aclose()

    def _stream_end(
        self, text: "_VisibleText", theirs: list[dict[str, Any]], finish: str | None
    ) -> list[bytes]:
        out = list(text.start())
        for index, call in enumerate(theirs):
            function = call["function"]
            out.append(
                self._chunk(
                    {
                        "tool_calls": [
                            {
                                "index": index,
                                "id": call["id"],
                                "type": "function",
                                "function": {
                                    "name": function["name"],
                                    "arguments": function["arguments"],
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
        self.sent = ""

    def start(self) -> list[bytes]:
        if self._started:
            return []
        self._started = True
        return [self._chunk({"role": "assistant", "content": "", "refusal": None})]

    def delta(self, delta: dict[str, Any]) -> list[bytes]:
        return [*self.start(), self._chunk(delta)]

    def add(self, text: str) -> list[bytes]:
        if not text:
            return []
        out = self.start()
        if not self._in_piece:
            if self._pieces:
                text = "\n\n" + text
            self._pieces += 1
            self._in_piece = True
        self.sent += text
        out.append(self._chunk({"content": text}))
        return out

    def piece(self, text: str) -> list[bytes]:
        """A whole piece at once (a transcript block)."""
        out = self.add(text)
        self.end_piece()
        return out

    def end_piece(self) -> None:
        self._in_piece = False
