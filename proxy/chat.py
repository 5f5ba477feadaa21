"""One chat turn with the interpreter on: recall the conversation, run the loop, remember it."""

from typing import Any

from executor.api import ExecutorError
from proxy.coderunner import DATA, CodeRunner, SavedFile
from proxy.conversations import Memory, cap, rebuild, recall, remember, visible
from proxy.deps import Services, get_executor
from proxy.errors import PayloadTooLargeError
from proxy.filestore import store_file
from proxy.interpreter import Plan
from proxy.links import download_url
from proxy.loop import ChatLoop
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


async def start_turn(
    services: Services, tenant: str, body: dict[str, Any], plan: Plan, base_url: str
) -> ChatLoop:
    """Everything checked and recalled; the loop is ready to run."""
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

    async def on_finish(loop: ChatLoop) -> None:
        if not (memory.known or runner.session_id):
            return
        files = dict(memory.files)
        for run in runner.runs:
            files.update(
                {f.path: f.file_id for f in run.files if f.path and f.path.startswith(DATA)}
            )
        turn = {
            "index": len(visible(messages)),
            "content": loop.final_content,
            "hidden": loop.hidden,
        }
        await remember(
            services,
            tenant,
            messages=messages,
            reply=loop.reply(),
            turns=[*memory.turns, turn],
            files=files,
            session_id=runner.session_id,
        )

    return ChatLoop(
        settings=services.settings,
        upstream=services.upstream,
        runner=runner,
        body=body,
        plan=plan,
        history=rebuild(messages, cap(memory.turns, services.settings.max_hidden_chars))
        if memory.known
        else None,
        note=RESET_NOTE if memory.reset else "",
        transcript=Transcript(plan.transcript or "none", links.url),
        links=LinkRewriter(links.resolve),
        on_finish=on_finish,
    )
