"""One chat turn with the interpreter on: recall the conversation, run the engine, render its
events as a `chat.completion` (or its chunks), remember the conversation."""

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn

from executor.api import ExecutorError
from proxy.coderunner import DATA, CodeRunner, SavedFile
from proxy.conversations import Memory, cap, rebuild, recall, remember, visible
from proxy.deps import Services, get_executor
from proxy.engine import Engine, Turn
from proxy.errors import APIError, PayloadTooLargeError
from proxy.events import Done, Event, Failed, MessageDone, TextDelta
from proxy.filestore import store_file
from proxy.ids import new_id
from proxy.interpreter import Plan
from proxy.links import download_url
from proxy.model import OWNED, ChatCompletionsModel
from proxy.renderers.chat import ChatCompletionJSON, ChatCompletionSSE, ChatView, json_mode
from proxy.transcript import LinkRewriter, Transcript
from storage.files import get_file

RESET_NOTE = (
    "Note: the sandbox this conversation used before has expired, so its Python state "
    "(variables, imports) is gone; files it had saved in /mnt/data were put back. Re-run "
    "earlier code if you need its results."
)


class FileLinks:
    """Download links for the files of one turn, and `sandbox:/mnt/data/…` resolution."""

    def __init__(
        self, services: Services, runner: CodeRunner, base_url: str, known: dict[str, str]
    ) -> None:
        self.services = services
        self.runner = runner
        self.base_url = services.settings.public_url or base_url
        self.known = known

    def url(self, saved: SavedFile) -> str:
        return download_url(
            self.base_url,
            self.services.signing_key,
            file_id=saved.file_id,
            tenant=self.runner.tenant,
            filename=saved.filename,
            ttl=self.services.settings.link_ttl,
        )

    async def resolve(self, path: str) -> str | None:
        """The link for a /mnt/data path: a file this conversation produced, or else the
        file as it is in the sandbox now (stored on the spot); None if there is none."""
        for run in reversed(self.runner.runs):
            for saved in run.files:
                if saved.path == path:
                    return self.url(saved)
        if path in self.known:
            async with self.services.db() as db:
                row = await get_file(db, tenant=self.runner.tenant, file_id=self.known[path])
            if row is not None:
                return self.url(SavedFile(row.id, row.filename, row.bytes, path))
        if self.runner.session_id is None:
            return None
        settings = self.services.settings
        try:
            chunks = await self.runner.executor.read_file(
                self.runner.tenant, self.runner.session_id, path
            )
            row = await store_file(
                self.services.db,
                self.services.blobs,
                tenant=self.runner.tenant,
                filename=path.rsplit("/", 1)[-1],
                purpose="assistants_output",
                chunks=chunks,
                max_bytes=min(settings.max_upload_bytes, settings.max_export_bytes),
                quota=settings.storage_quota_bytes,
            )
        except (ExecutorError, PayloadTooLargeError):
            return None
        self.known[path] = row.id
        return self.url(SavedFile(row.id, row.filename, row.bytes, path))


class ChatTurn:
    """Drives the engine for one chat completion and renders it; `complete()` or `stream()`."""

    def __init__(
        self,
        engine: Engine,
        *,
        model: str,
        transcript: Transcript,
        links: LinkRewriter | None,
        structured: bool,
        include_usage: bool,
        on_done: Callable[[Done, ChatView], Awaitable[None]] | None = None,
    ) -> None:
        self.engine = engine
        self.id = new_id("chatcmpl-", 29)
        self.created = int(time.time())
        self.model = model
        self.transcript = transcript
        self.links = links
        self.structured = structured
        self.include_usage = include_usage
        self.on_done = on_done

    async def complete(self) -> dict[str, Any]:
        """The `chat.completion`; an error is raised with the status to answer."""
        renderer = ChatCompletionJSON(
            id=self.id,
            created=self.created,
            transcript=self.transcript,
            structured=self.structured,
        )
        try:
            async for event in self._events(renderer):
                renderer.feed(event)
        except Exception as exc:
            self._raise(exc)
        return renderer.result()

    async def stream(self) -> AsyncIterator[bytes]:
        """SSE bytes; an error before the first byte is raised, later ones go in-band."""
        renderer = ChatCompletionSSE(
            id=self.id,
            created=self.created,
            model=self.model,
            transcript=self.transcript,
            structured=self.structured,
            include_usage=self.include_usage,
        )
        try:
            async for event in self._events(renderer):
                for out in renderer.feed(event):
                    yield out
        except Exception as exc:
            self._raise(exc)

    def _raise(self, exc: Exception) -> NoReturn:
        err: APIError = self.engine.failure(exc)
        if err is exc:
            raise err
        raise err from exc

    async def _events(self, view: ChatView) -> AsyncIterator[Event]:
        """The engine's events as this client sees them: `sandbox:` links rewritten (a link
        split across deltas is held back until it is whole), the conversation remembered
        before the last frames go out, a failure raised."""
        links = self.links
        async for event in self.engine.events():
            if links is not None and isinstance(event, TextDelta):
                text = await links.feed(event.text)
                if not text:
                    continue
                event = TextDelta(text)
            elif links is not None and isinstance(event, MessageDone):
                rest = await links.flush()
                if rest:
                    yield TextDelta(rest)
            elif isinstance(event, Done) and self.on_done is not None:
                await self.on_done(event, view)
            elif isinstance(event, Failed):
                raise event.error
            yield event


async def start_turn(
    services: Services, tenant: str, body: dict[str, Any], plan: Plan, base_url: str
) -> ChatTurn:
    """Everything checked and recalled; the turn is ready to run."""
    runner = CodeRunner(services, await get_executor(services), tenant, source="chat")
    memory = Memory()
    if plan.container is None:
        memory = await recall(services, tenant, body["messages"])
    await runner.attach(
        session_id=plan.container or memory.session_id,
        file_ids=plan.file_ids,
        restore=memory.files if memory.reset else None,
    )
    links = FileLinks(services, runner, base_url, dict(memory.files))
    messages = body["messages"]
    structured = json_mode(body)

    async def on_done(done: Done, view: ChatView) -> None:
        if not (memory.known or runner.session_id):
            return
        files = dict(memory.files)
        for run in runner.runs:
            files.update(
                {f.path: f.file_id for f in run.files if f.path and f.path.startswith(DATA)}
            )
        turn = {"index": len(visible(messages)), "content": done.text, "hidden": done.hidden}
        await remember(
            services,
            tenant,
            messages=messages,
            reply=view.reply(),
            turns=[*memory.turns, turn],
            files=files,
            session_id=runner.session_id,
        )

    stream = bool(body.get("stream"))
    turn = Turn(
        messages=rebuild(messages, cap(memory.turns, services.settings.max_hidden_chars))
        if memory.known
        else messages,
        options={k: v for k, v in body.items() if k not in OWNED},
        client_tools=plan.client_tools,
        tool_choice=body.get("tool_choice", "auto"),
        parallel_tool_calls=body.get("parallel_tool_calls"),
        stream=stream,
        stream_options=body.get("stream_options"),
        note=RESET_NOTE if memory.reset else "",
    )
    return ChatTurn(
        Engine(
            settings=services.settings,
            model=ChatCompletionsModel(services.upstream),
            runner=runner,
            turn=turn,
        ),
        model=body.get("model", ""),
        transcript=Transcript(plan.transcript or "none", links.url),
        links=None if structured else LinkRewriter(links.resolve),
        structured=structured,
        include_usage=bool((body.get("stream_options") or {}).get("include_usage")),
        on_done=on_done,
    )
