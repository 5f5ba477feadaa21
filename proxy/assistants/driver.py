"""Driving one run: the thread's sandbox, the engine, the renderer, storage and the stream.

A driver runs in a background task of the process that created (or resumed) the run. It
prepares the thread's sandbox — the same session as the thread's earlier runs while it lives;
a new one with the thread's files put back, and the model told its variables are gone, once
it has expired — builds the upstream context, and folds the engine's events with the run
renderer. Every change of the run's status is stored before its frames go to the streams that
follow the run (a client that sees `requires_action` can submit tool outputs at once; one
that sees `completed` finds the messages), and the steps are stored before code runs and
before each further model call, so any process answers a GET with what has run; text is only
streamed as it arrives. The driver stops at `requires_action`, at the end of the run, at a
token limit, or when it is cancelled (by a client, or by the shutdown of the service).
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any, cast

from executor.api import Executor, SessionNotFound
from proxy.assistants.context import attachment_files, thread_context
from proxy.assistants.objects import TERMINAL
from proxy.assistants.store import SHUTDOWN, changes, dump, new_row, public, write
from proxy.coderunner import DATA, CodeRunner
from proxy.containers import RESET_NOTE
from proxy.deps import Services
from proxy.engine import Engine, Turn
from proxy.errors import APIError, translate
from proxy.events import ClientCall, CodeDone, Done, Event, Failed, MessageDone, RoundFinished
from proxy.jsonutil import dumps, loads
from proxy.model import ChatCompletionsModel, add_usage
from proxy.renderers.assistants import RunRenderer
from storage.assistants import (
    get_object,
    release_thread,
    thread_messages,
    update_thread_sandbox,
)
from storage.files import get_file
from storage.models import Assistant, AssistantsObject, Thread, ThreadRun

logger = logging.getLogger(__name__)

# The statuses in which a run waits for nothing of its driver.
RESTING = (*TERMINAL, "requires_action")
# Run fields passed to the upstream as they are, when set.
OPTIONS = ("temperature", "top_p", "reasoning_effort", "max_completion_tokens")


class Feed:
    """The frames of a run driven by this process, for the streams that follow it."""

    def __init__(self) -> None:
        self._queues: list[asyncio.Queue[list[bytes] | None]] = []
        self.closed = False

    def subscribe(self) -> "asyncio.Queue[list[bytes] | None]":
        queue: asyncio.Queue[list[bytes] | None] = asyncio.Queue()
        if self.closed:
            queue.put_nowait(None)
        self._queues.append(queue)
        return queue

    def unsubscribe(self, queue: "asyncio.Queue[list[bytes] | None]") -> None:
        with contextlib.suppress(ValueError):
            self._queues.remove(queue)

    def publish(self, frames: list[bytes]) -> None:
        if frames:
            for queue in self._queues:
                queue.put_nowait(frames)

    def close(self) -> None:
        self.closed = True
        for queue in self._queues:
            queue.put_nowait(None)


@dataclass
class Sandbox:
    """The thread's sandbox as a run finds it."""

    session_id: str | None
    # {file_id: path} of input files already in the session; {path: file_id} of files its
    # code wrote.
    placed: dict[str, str]
    outputs: dict[str, str]
    # The session had expired: a new one gets the files back and the model is told.
    reset: bool = False
    # Input files to copy in now.
    to_place: list[str] = field(default_factory=list)


class RunDriver:
    """Drives one stretch of a run: from its start, or from submitted tool outputs."""

    def __init__(
        self,
        services: Services,
        row: ThreadRun,
        *,
        tenant: str,
        feed: Feed,
        stream: bool,
    ) -> None:
        self.services = services
        self.tenant = tenant
        self.row = row
        self.run = public(row)
        self.feed = feed
        self.stream = stream
        # Why the driver was stopped from outside: "cancel" or "shutdown".
        self.stop_reason: str | None = None
        self.started = False
        self._transcript: list[dict[str, Any]] = loads(row.transcript)
        # Changed objects not stored yet, and the steps and messages already stored.
        self._unsaved: dict[str, dict[str, Any]] = {}
        self._stored: set[str] = set()
        # The last write, each chained after the one before.
        self._writing: asyncio.Future[None] | None = None
        self._runner: CodeRunner | None = None
        self._sandbox: Sandbox | None = None
        # The input files the runner still had to copy in when the run began: path → id.
        self._pending: dict[str, str] = {}

    async def drive(self) -> None:
        """Run until the run ends or needs the client's tool outputs; never raises."""
        self.started = True
        renderer: RunRenderer | None = None
        try:
            thread, assistant, messages = await self._load()
            renderer = RunRenderer(
                self.run,
                files=loads(thread.outputs) if thread else {},
                action_timeout=self.services.settings.run_action_timeout,
            )
            if self.stop_reason is not None or thread is None:
                raise asyncio.CancelledError  # stopped before it began, or its thread is gone
            await self._emit(renderer, renderer.start())
            interpreter = any(t["type"] == "code_interpreter" for t in self.run["tools"])
            self._sandbox = await self._prepare(thread, assistant, messages, interpreter)
            self._runner = await self._attach(self._sandbox, interpreter)
            engine = await self._engine(messages, interpreter)
            await self._loop(engine, renderer)
        except asyncio.CancelledError:
            if renderer is not None:
                shutdown = self.stop_reason == "shutdown"
                await self._end(
                    renderer, renderer.fail(APIError(SHUTDOWN)) if shutdown else renderer.cancel()
                )
        except Exception as exc:
            if renderer is not None:
                await self._end(renderer, renderer.fail(translate(exc)))
            else:
                logger.exception("run %s could not start", self.run["id"])
        finally:
            self.feed.close()

    async def _end(self, renderer: RunRenderer, frames: list[bytes]) -> None:
        try:
            await self._emit(renderer, frames)
        except Exception:
            logger.exception("run %s ended but could not be stored", self.run["id"])

    async def _loop(self, engine: Engine, renderer: RunRenderer) -> None:
        usage: dict[str, Any] = {}
        calls: list[dict[str, Any]] = []
        # Closed at once when the run stops early, so running code is interrupted now.
        stream = cast(AsyncGenerator[Event, None], engine.events())
        async with contextlib.aclosing(stream) as events:
            async for event in events:
                if isinstance(event, Failed):
                    await self._emit(renderer, renderer.fail(event.error))
                    return
                if isinstance(event, MessageDone):
                    add_usage(usage, event.usage)
                    reason = self._limit(event, usage)
                    if reason is not None:
                        await self._emit(renderer, renderer.incomplete(reason, usage))
                        return
                if isinstance(event, ClientCall):
                    calls.append(event.raw)
                frames = renderer.feed(event)
                if isinstance(event, Done):
                    said: dict[str, Any] = {"role": "assistant", "content": event.text}
                    if calls:
                        said["tool_calls"] = calls
                    self._transcript += [*event.hidden, said]
                # Stored before code runs and before each further model call, so that a
                # GET meanwhile shows what ran; text as it arrives is only sent.
                await self._emit(renderer, frames, now=isinstance(event, CodeDone | RoundFinished))

    def _limit(self, done: MessageDone, usage: dict[str, Any]) -> str | None:
        """The token limit the run has reached, if any. A final answer that ended by itself
        is kept whole."""
        max_prompt = self.run.get("max_prompt_tokens")
        max_completion = self.run.get("max_completion_tokens")
        if done.finish_reason == "length":
            return "max_completion_tokens"
        if done.final:
            return None
        if max_prompt is not None and usage.get("prompt_tokens", 0) > max_prompt:
            return "max_prompt_tokens"
        if max_completion is not None and usage.get("completion_tokens", 0) > max_completion:
            return "max_completion_tokens"
        return None

    async def _emit(self, renderer: RunRenderer, frames: list[bytes], *, now: bool = False) -> None:
        """Send the frames, storing what changed: before sending when the run comes to rest
        (a client acts on `requires_action` or `completed` at once), else alongside, when
        the run's status changed or `now`."""
        for obj in renderer.take_changes():
            self._unsaved[obj["id"]] = obj
        if self._unsaved and (now or self.run["id"] in self._unsaved):
            self._store()
        if self.run["status"] in RESTING and self._writing is not None:
            # Shielded: a cancellation meanwhile must not lose the write.
            await asyncio.shield(self._writing)
        self.feed.publish(frames)

    def _store(self) -> None:
        """Write the unsaved objects as they are now, after the writes before (in a task of
        its own, so the run goes on meanwhile)."""
        run = self.run
        rows: list[AssistantsObject] = []
        updates: list[tuple[type[AssistantsObject], str, dict[str, Any]]] = []
        for obj in self._unsaved.values():
            if obj is run or obj["id"] in self._stored:
                extra: dict[str, Any] = {}
                if obj is run:
                    extra = {
                        "heartbeat_at": time.time(),
                        "transcript": dumps(self._transcript).decode(),
                    }
                model, values = changes(obj, **extra)
                updates.append((model, obj["id"], values))
            else:  # the driver makes every step and message of its stretch of the run
                parents = {"run_id": run["id"]}
                if obj["object"] == "thread.message":
                    parents["thread_id"] = run["thread_id"]
                rows.append(new_row(obj, tenant=self.tenant, **parents))
                self._stored.add(obj["id"])
        self._unsaved.clear()
        # With the run's end: its thread's next run may start right after, and must find the
        # sandbox as this run left it.
        sandbox = self._sandbox_columns() if run["status"] in RESTING else {}
        release = run["status"] in TERMINAL
        self._writing = asyncio.ensure_future(
            self._write(rows, updates, sandbox, release, after=self._writing)
        )

    async def _write(
        self,
        rows: list[AssistantsObject],
        updates: list[tuple[type[AssistantsObject], str, dict[str, Any]]],
        sandbox: dict[str, Any],
        release: bool,
        *,
        after: "asyncio.Future[None] | None",
    ) -> None:
        if after is not None:
            # In order, whatever became of it (it logged its own failure).
            with contextlib.suppress(Exception):
                await after
        thread_id, run_id = self.run["thread_id"], self.run["id"]
        try:
            async with self.services.db() as db:
                for row in rows:
                    db.add(row)
                for model, id, values in updates:
                    await write(db, model, id, values)
                if release:
                    await release_thread(db, thread_id=thread_id, run_id=run_id, **sandbox)
                elif sandbox:
                    await update_thread_sandbox(db, thread_id=thread_id, **sandbox)
                await db.commit()
        except Exception:
            logger.exception("could not store the state of run %s", run_id)
            raise

    async def _load(self) -> tuple[Thread | None, Assistant | None, list[dict[str, Any]]]:
        async with self.services.db() as db:
            thread = await get_object(db, Thread, tenant=self.tenant, id=self.row.thread_id)
            assistant = await get_object(
                db, Assistant, tenant=self.tenant, id=self.run["assistant_id"]
            )
            rows = await thread_messages(db, thread_id=self.row.thread_id)
        return thread, assistant, [public(row) for row in rows]

    async def _prepare(
        self,
        thread: Thread,
        assistant: Assistant | None,
        messages: list[dict[str, Any]],
        interpreter: bool,
    ) -> Sandbox:
        """The thread's sandbox as this run finds it, and the input files to copy in: the
        assistant's, the thread's and those attached to its messages."""
        sandbox = Sandbox(thread.session_id, loads(thread.placed), loads(thread.outputs))
        if not interpreter:
            return sandbox
        executor = self.services.executor
        if sandbox.session_id is not None and executor is not None:
            try:
                await executor.get_session(self.tenant, sandbox.session_id)
            except SessionNotFound:
                sandbox.session_id, sandbox.placed, sandbox.reset = None, {}, True
        inputs: list[str] = []
        for owner in (assistant, thread):
            if owner is not None:
                resources = loads(owner.data).get("tool_resources") or {}
                inputs += (resources.get("code_interpreter") or {}).get("file_ids", [])
        inputs += attachment_files(messages)
        async with self.services.db() as db:
            sandbox.to_place = [
                f
                for f in dict.fromkeys(inputs)
                if f not in sandbox.placed
                and await get_file(db, tenant=self.tenant, file_id=f) is not None
            ]
        return sandbox

    async def _attach(self, sandbox: Sandbox, interpreter: bool) -> CodeRunner:
        # Without the interpreter the engine hands every call back and never uses the
        # executor, which may then be absent (runs with the interpreter check it exists).
        executor = cast(Executor, self.services.executor)
        runner = CodeRunner(self.services, executor, self.tenant, source="assistants")
        if interpreter:
            await runner.attach(
                session_id=sandbox.session_id,
                file_ids=sandbox.to_place,
                restore=sandbox.outputs if sandbox.reset else None,
            )
        self._pending = runner.pending_paths
        return runner

    async def _engine(self, thread: list[dict[str, Any]], interpreter: bool) -> Engine:
        run, sandbox, runner = self.run, self._sandbox, self._runner
        assert sandbox is not None and runner is not None
        paths = {**sandbox.placed, **{fid: path for path, fid in self._pending.items()}}
        messages = await thread_context(
            self.services, self.tenant, run=run, thread=thread, paths=paths
        )
        notes: list[str] = []
        if sandbox.reset:
            notes.append(RESET_NOTE)
        placed = sorted(set(sandbox.placed.values()))
        if interpreter and placed:
            notes.append(
                "Files already in /mnt/data from earlier in this thread:\n"
                + "\n".join(f"- {path}" for path in placed)
            )
        options: dict[str, Any] = {"model": run["model"]}
        for name in OPTIONS:
            if run.get(name) is not None:
                options[name] = run[name]
        response_format = run.get("response_format")
        if isinstance(response_format, dict) and response_format.get("type") != "text":
            options["response_format"] = response_format
        turn = Turn(
            messages=[*messages, *self._transcript],
            options=options,
            client_tools=[
                {"type": "function", "function": t["function"]}
                for t in run["tools"]
                if t["type"] == "function"
            ],
            tool_choice=run.get("tool_choice") or "auto",
            parallel_tool_calls=None if run.get("parallel_tool_calls", True) else False,
            stream=self.stream,
            note="\n\n".join(notes),
            interpreter=interpreter,
        )
        return Engine(
            settings=self.services.settings,
            model=ChatCompletionsModel(self.services.upstream),
            runner=runner,
            turn=turn,
        )

    def _sandbox_columns(self) -> dict[str, Any]:
        """The thread's session, the inputs now in it and the files its code wrote."""
        runner, sandbox = self._runner, self._sandbox
        if runner is None or sandbox is None or runner.session_id is None:
            return {}
        placed = sandbox.placed if runner.session_id == sandbox.session_id else {}
        still = runner.pending_paths
        wanted = set(sandbox.to_place)
        for path, file_id in self._pending.items():
            if path not in still and file_id in wanted:
                placed[file_id] = path
        outputs = dict(sandbox.outputs)
        for run in runner.runs:
            for saved in run.files:
                if saved.path and saved.path.startswith(DATA + "/"):
                    outputs[saved.path] = saved.file_id
        return {"session_id": runner.session_id, "placed": dump(placed), "outputs": dump(outputs)}
