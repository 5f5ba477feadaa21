"""The code-interpreter loop: one engine that runs the rounds, many surfaces that render it.

How it fits together
--------------------
A surface (chat completions today; Responses and Assistants next) translates its request into
a `Turn`, builds an `Engine` with a `Model` (the upstream, see `proxy/model.py`) and a
`CodeRunner` (the tenant's sandbox session and files), and iterates `Engine.events()`. The
engine runs the rounds — upstream call, the model's interpreter calls run in the sandbox,
their results fed back, repeat — and yields the typed events of `proxy/events.py` (their order
is drawn at the top of that module). It hands the client's own function calls back, sums usage
over every upstream call, stops at `settings.max_rounds` (the last round offers no
interpreter), sends heartbeats while code runs when asked to, and ends with exactly one `Done`
or `Failed`. Cancelling the iteration (a client gone) cancels the running code, which frees
the sandbox session for the next request.

The engine never formats wire JSON and never decides what a client sees. A renderer is a
plain synchronous fold over the events into one surface's wire format; it never calls the
upstream or the executor. `proxy/renderers/chat.py` holds the two chat renderers (the
`chat.completion` object and its SSE chunks); the markdown transcript and the rewriting of
`sandbox:/mnt/data/…` links live on that side too (`proxy/transcript.py`), as does anything
a surface remembers after a turn (`proxy/chat.py` keeps a chat conversation's hidden steps).

Adding a surface: translate the request into a `Turn` (chat-completions shapes: messages,
function tools, `tool_choice`; the surface's own fields such as `text.format` become
`Turn.options`, e.g. `response_format`), prepare the runner (`CodeRunner.attach`; a continued
conversation passes its earlier hidden steps back in `Turn.messages` and its container to
`attach`), write a renderer that folds the events, and persist what `Done` reports (`text`,
`hidden`, `container_id`, `usage`) if the surface keeps state. A call's id (`ci_…`), its
container, its code before it runs, its outputs (logs, images with file ids) and the files it
wrote (`Run.files`, with their /mnt/data paths) are all in the events.
"""

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from executor.api import InvalidRequest as ExecutorInvalidRequest
from proxy.coderunner import CodeRunner, Run
from proxy.errors import APIError, InvalidRequestError, translate
from proxy.events import (
    CallFinished,
    CallStarted,
    ClientCall,
    CodeDelta,
    CodeDone,
    Done,
    Event,
    Failed,
    Heartbeat,
    MessageDone,
    RoundFinished,
    RoundStarted,
)
from proxy.interpreter import (
    TOOL,
    TOOL_NAME,
    add_system_note,
    parse_arguments,
    system_note,
    tool_result,
)
from proxy.model import Model, ModelRequest, Opened, Reply, add_usage
from proxy.settings import Settings

T = TypeVar("T")

HEARTBEAT = Heartbeat()


@dataclass
class Turn:
    """What a surface asks of the engine, in chat-completions shapes."""

    # The conversation as the upstream should see it, earlier hidden steps included.
    messages: list[dict[str, Any]]
    # Upstream request fields the engine does not own (see `proxy.model.OWNED`).
    options: dict[str, Any] = field(default_factory=dict)
    # The client's own function tools, offered beside the interpreter.
    client_tools: list[dict[str, Any]] = field(default_factory=list)
    # `auto`, `none`, `required`, a named function, or `{"type": "code_interpreter"}`.
    tool_choice: Any = "auto"
    parallel_tool_calls: bool | None = None
    # Ask the upstream for a stream (text deltas as they come) and send heartbeats.
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    # Said to the model after the interpreter's own system note (e.g. that state was lost).
    note: str = ""
    # Offer the interpreter. Off, the turn is the model with the client's functions alone
    # (an assistant without the code interpreter): no interpreter tool, no system note of it,
    # and every call the model makes is handed back.
    interpreter: bool = True


class Engine:
    """One turn of the interpreter loop; iterate `events()` once."""

    def __init__(self, *, settings: Settings, model: Model, runner: CodeRunner, turn: Turn) -> None:
        self.settings = settings
        self.model = model
        self.runner = runner
        self.turn = turn
        system = "\n".join(
            ([system_note(runner.pending_files)] if turn.interpreter else []) + [turn.note]
        ).strip()
        self.messages = add_system_note(turn.messages, system) if system else list(turn.messages)
        self._turn_start = len(self.messages)
        self.usage: dict[str, Any] = {}
        self._heartbeat = settings.keepalive_interval if turn.stream else None

    @property
    def ran_code(self) -> bool:
        return bool(self.runner.runs)

    def failure(self, exc: BaseException) -> APIError:
        """`exc` as the error to show; once code has run, a retry would run it again."""
        err = translate(exc)
        if self.ran_code:
            err.headers["x-should-retry"] = "false"
        return err

    async def events(self) -> AsyncIterator[Event]:
        """Run the turn, saying what happens (see `proxy/events.py` for the order)."""
        try:
            for round_no in range(self.settings.max_rounds + 1):
                last_round = round_no >= self.settings.max_rounds
                reply: Reply | None = None
                async for item in self.model.reply(self._request(round_no, last_round)):
                    if isinstance(item, Reply):
                        reply = item
                    elif isinstance(item, Opened):
                        yield RoundStarted(round_no, item.model)
                    else:
                        yield item
                if reply is None:
                    raise AssertionError("the model ended without a reply")
                add_usage(self.usage, reply.usage)
                ours, theirs = split_calls(reply.tool_calls, self.turn.interpreter)
                final = not ours or last_round
                yield MessageDone(
                    round_no,
                    reply.content,
                    reply.refusal,
                    final,
                    reply.finish_reason,
                    reply.usage,
                    reply.raw,
                )
                if final:
                    for call in theirs:
                        function = call.get("function") or {}
                        yield ClientCall(
                            call.get("id", ""),
                            function.get("name", ""),
                            function.get("arguments", ""),
                            call,
                        )
                    yield self._done(reply, bool(theirs))
                    return
                self.messages.append(
                    {"role": "assistant", "content": reply.content, "tool_calls": ours}
                )
                for call in ours:
                    async for event in self._call(call):
                        yield event
                yield RoundFinished(round_no)
        except Exception as exc:
            yield Failed(self.failure(exc))

    def _done(self, reply: Reply, handed_back: bool) -> Done:
        if handed_back:
            finish = "tool_calls"
        elif reply.finish_reason in (None, "tool_calls"):
            finish = "stop"
        else:
            finish = reply.finish_reason
        return Done(
            finish,
            reply.content,
            self.usage,
            self.messages[self._turn_start :],
            self.runner.session_id,
        )

    def _request(self, round_no: int, last_round: bool) -> ModelRequest:
        turn = self.turn
        tools = turn.client_tools + ([TOOL] if turn.interpreter and not last_round else [])
        return ModelRequest(
            options=turn.options,
            messages=self.messages,
            tools=tools,
            tool_choice=self._tool_choice(round_no, last_round) if tools else None,
            parallel_tool_calls=turn.parallel_tool_calls,
            stream=turn.stream,
            stream_options=turn.stream_options,
        )

    def _tool_choice(self, round_no: int, last_round: bool) -> Any:
        choice = self.turn.tool_choice
        names_ours = isinstance(choice, dict) and (
            choice.get("type") == "code_interpreter"
            or (choice.get("function") or {}).get("name") == TOOL_NAME
        )
        if choice == "none":
            return "none"
        if last_round or round_no > 0:
            # Forcing a tool again after it ran would loop until the round limit.
            return "auto" if (names_ours or choice == "required") else choice
        if names_ours:
            return {"type": "function", "function": {"name": TOOL_NAME}}
        return choice

    async def _call(self, call: dict[str, Any]) -> AsyncIterator[Event]:
        """Run one interpreter call. A problem the model caused (arguments it cannot have
        meant, a language there is no runtime for) becomes the tool result it reads."""
        try:
            code, language = parse_arguments((call.get("function") or {}).get("arguments") or "")
        except InvalidRequestError as exc:
            self._answer(call, f"[error] {exc}")
            return
        # One random draw: ids of calls are made on the hot path (`new_id` draws per letter).
        item_id = "ci_" + secrets.token_hex(20)
        error: str | None = None
        runs: list[Run] = []
        try:
            async for beat in self._wait(self.runner.session(), []):
                yield beat
        except ExecutorInvalidRequest as exc:
            error = str(exc)
        yield CallStarted(item_id, call.get("id", ""), self.runner.session_id)
        yield CodeDelta(item_id, code)
        yield CodeDone(item_id, code, language)
        if error is None:
            try:
                async for beat in self._wait(self.runner.run(code, language), runs):
                    yield beat
            except ExecutorInvalidRequest as exc:
                error = str(exc)
        run = runs[0] if runs else None
        if run is None:
            self._answer(call, f"[error] {error}")
        else:
            self._answer(
                call,
                tool_result(
                    run.result,
                    saved_files=[(f.path or f.filename, f.bytes) for f in run.files],
                    skipped_files=[f.note() for f in run.skipped],
                    images=len(run.images),
                    limit=self.settings.tool_result_max_chars,
                ),
            )
        yield CallFinished(item_id, run, error)

    def _answer(self, call: dict[str, Any], text: str) -> None:
        self.messages.append({"role": "tool", "tool_call_id": call.get("id"), "content": text})

    async def _wait(
        self, work: Coroutine[Any, Any, T], result: list[T]
    ) -> AsyncIterator[Heartbeat]:
        """Await `work` and append its result to `result`, with a heartbeat every interval
        when heartbeats are on. Raises what `work` raises; if the caller goes away, `work` is
        cancelled (and with it any code that runs)."""
        if self._heartbeat is None:
            result.append(await work)
            return
        task = asyncio.ensure_future(work)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=self._heartbeat)
                if done:
                    break
                yield HEARTBEAT
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        result.append(task.result())


def split_calls(
    calls: list[dict[str, Any]] | None, interpreter: bool = True
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(calls of the interpreter, calls of the client's functions)."""
    ours: list[dict[str, Any]] = []
    theirs: list[dict[str, Any]] = []
    for call in calls or []:
        name = (call.get("function") or {}).get("name")
        (ours if interpreter and name == TOOL_NAME else theirs).append(call)
    return ours, theirs
