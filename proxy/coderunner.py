"""Running code for a tenant: its session, its input files, its output files, its audit trail.

Shared by the chat loop and the direct `/v1/code_interpreter` API. Everything a tenant names
(session, file ids) is checked before any code runs or any upstream call is made.
"""

import base64
import posixpath
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from sqlmodel.ext.asyncio.session import AsyncSession

from codeproxy import logs
from codeproxy.metrics import waiting
from executor.api import (
    ExecuteRequest,
    ExecutionResult,
    Executor,
    ExecutorError,
    FileEntry,
    SandboxFileNotFound,
    SessionEvicted,
    SessionExpired,
    SessionOptions,
    check_code,
)
from proxy.containers import ContainerSpec, record_file, register
from proxy.deps import Services
from proxy.errors import PayloadTooLargeError, QuotaExceededError
from proxy.filestore import open_file, require_file, store_file
from proxy.ids import new_id
from proxy.interpreter import strip_ansi
from proxy.jsonutil import dumps
from storage.files import get_file
from storage.models import Execution, File

DATA = "/mnt/data"
IMAGE_TYPES = {"image/png": "png", "image/jpeg": "jpg", "image/gif": "gif"}
# The audit record keeps this much of the code and of each output stream.
AUDIT_CODE_CHARS = 64 * 1024
AUDIT_OUTPUT_CHARS = 10_000
# Why an output was not stored, as the model and the client are told.
SKIP_REASONS = {
    "export_limit": "over the export limit of one execution",
    "storage_quota": "the storage quota is used up",
    "invalid_name": "its name is not valid UTF-8",
    "unreadable": "it could not be read",
}


@dataclass
class SavedFile:
    """A file the code produced, stored as a tenant file."""

    file_id: str
    filename: str
    bytes: int
    path: str | None = None  # where it lives in /mnt/data; None for displayed images
    # The container file (`cfile_…`) it is in the container the code ran in.
    container_file_id: str | None = None

    def public(self) -> dict[str, Any]:
        return {
            "file_id": self.file_id,
            "filename": self.filename,
            "bytes": self.bytes,
            "path": self.path,
        }


@dataclass
class SkippedFile:
    """An output that was not stored, and why (a key of SKIP_REASONS)."""

    path: str
    bytes: int
    reason: str

    def public(self) -> dict[str, Any]:
        return {"path": self.path, "bytes": self.bytes, "reason": self.reason}

    def note(self) -> str:
        """One line for the model."""
        return f"{self.path} ({self.bytes} bytes): {SKIP_REASONS[self.reason]}"


@dataclass
class Run:
    """One execution as this service reports it."""

    id: str
    code: str
    language: str
    result: ExecutionResult
    files: list[SavedFile] = field(default_factory=list)
    images: list[SavedFile] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)

    def logs(self) -> str:
        """What the run printed, its last expression's value and its error, as one text."""
        r = self.result
        lines = [strip_ansi(r.stdout), strip_ansi(r.stderr)]
        for output in r.results:
            if output.kind == "execute_result" and "text/plain" in output.data:
                lines.append(strip_ansi(output.data["text/plain"]))
        if r.error is not None:
            lines.append(
                strip_ansi("\n".join(r.error.traceback)) or f"{r.error.name}: {r.error.value}"
            )
        if r.timed_out:
            lines.append("[timed out]")
        return "\n".join(line.rstrip("\n") for line in lines if line.strip())

    def public(self) -> dict[str, Any]:
        r = self.result
        return {
            "id": self.id,
            "language": self.language,
            "code": self.code,
            "stdout": r.stdout,
            "stderr": r.stderr,
            "error": r.error.model_dump() if r.error else None,
            "exit_code": r.exit_code,
            "duration_ms": r.duration_ms,
            "timed_out": r.timed_out,
            "state_lost": r.state_lost,
            "results": [o.model_dump() for o in r.results],
            "files": [f.public() for f in self.files],
            "images": [f.public() for f in self.images],
            "skipped_files": [f.public() for f in self.skipped],
        }


class CodeRunner:
    def __init__(
        self,
        services: Services,
        executor: Executor,
        tenant: str,
        *,
        source: str,
        user: str | None = None,
    ):
        self.services = services
        self.executor = executor
        self.tenant = tenant
        self.source = source
        # The end user of the tenant's app, whose quota a new session counts against.
        self.user = user
        self.session_id: str | None = None
        # What a new container is made with, when one is needed.
        self.spec = ContainerSpec()
        self.runs: list[Run] = []
        # Input files to copy into the sandbox before the first run, by their /mnt/data name,
        # and who put them there first (`user`, or `assistant` for files put back).
        self._pending: dict[str, File] = {}
        self._sources: dict[str, str] = {}
        # Files put into or saved from the session so far (and who first put them there),
        # to put back into a replacement.
        self._known: dict[str, tuple[File, str]] = {}
        # Whether the session may be replaced if it ends between two runs: the client did not
        # name it, so it cares for the work, not for that sandbox.
        self._replaceable = False
        # The conversation's files from earlier turns (path -> file id), for a replacement.
        self._conversation_files: dict[str, str] = {}

    async def attach(
        self,
        *,
        session_id: str | None,
        file_ids: list[str],
        restore: dict[str, str] | None = None,
        sources: dict[str, str] | None = None,
        replaceable: bool = False,
        conversation_files: dict[str, str] | None = None,
    ) -> None:
        """Check the named session and files belong to the tenant (404 otherwise).

        `restore` maps /mnt/data paths to files to put back there (a conversation's files,
        when its old sandbox is gone); those that no longer exist are skipped. `sources` says
        by path who first put them there (default: the code, `assistant`). A `replaceable`
        session (a conversation's, not one the client named) is replaced by a new one if it
        ends between two runs, with `conversation_files` (mapped likewise) and the turn's own
        files put back.
        """
        async with self.services.db() as db:
            rows = [
                await require_file(db, tenant=self.tenant, file_id=file_id) for file_id in file_ids
            ]
            restored = await self._files_at(db, restore or {})
            self._pending.update(restored)
            for name in restored:
                self._sources[name] = (sources or {}).get(f"{DATA}/{name}", "assistant")
        self._conversation_files = conversation_files or {}
        if session_id is not None:
            await self.executor.get_session(self.tenant, session_id)
            self.session_id = session_id
            self._replaceable = replaceable
        for row in rows:
            name = row.filename if row.filename not in self._pending else f"{row.id}-{row.filename}"
            self._pending[name] = row
            self._sources[name] = "user"

    async def _files_at(self, db: AsyncSession, paths: dict[str, str]) -> dict[str, File]:
        """The tenant's files that still exist, by their name under /mnt/data."""
        found: dict[str, File] = {}
        for path, file_id in paths.items():
            row = await get_file(db, tenant=self.tenant, file_id=file_id)
            if row is not None and path.startswith(DATA + "/"):
                found[path[len(DATA) + 1 :]] = row
        return found

    @property
    def pending_files(self) -> list[tuple[str, int]]:
        return [(f"{DATA}/{name}", row.bytes) for name, row in self._pending.items()]

    @property
    def pending_paths(self) -> dict[str, str]:
        """The files still to copy in before the first run: /mnt/data path → file id."""
        return {f"{DATA}/{name}": row.id for name, row in self._pending.items()}

    async def session(self) -> str:
        """The session to run in: the attached one, or a new one; input files copied in."""
        if self.session_id is None:
            options = (self.spec.options() or SessionOptions()).model_copy(
                update={"user": self.user}
            )
            info = await self.executor.create_session(self.tenant, options)
            self.session_id = info.id
            self._replaceable = True
            await register(self.services.db, self.tenant, info, self.spec)
        logs.session_id.set(self.session_id)
        while self._pending:
            name, row = next(iter(self._pending.items()))
            chunks = await open_file(self.services.blobs, row)
            await self.executor.upload_file(self.tenant, self.session_id, name, chunks)
            source = self._sources.pop(name, "user")
            await record_file(
                self.services.db,
                tenant=self.tenant,
                container_id=self.session_id,
                path=f"{DATA}/{name}",
                row=row,
                source=source,
            )
            self._known[name] = (self._pending.pop(name), source)
        return self.session_id

    async def run(self, code: str, language: str, *, timeout: float | None = None) -> Run:
        # An InvalidRequest of the executor's, as it would answer: the loop tells the model.
        check_code(code, self.services.settings.max_code_bytes)
        with waiting("executor"):
            request = ExecuteRequest(
                session_id=await self.session(),
                code=code,
                language=language,
                timeout=timeout or self.services.settings.code_timeout,
            )
            try:
                result = await self.executor.execute(self.tenant, request)
            except (SessionEvicted, SessionExpired):
                if not self._replaceable:
                    raise
                # The session this turn ran in ended between two runs (a waiting request took
                # it over): go on in a new one with the turn's files put back, and let the
                # model know that its variables are gone.
                self.session_id = None
                async with self.services.db() as db:
                    earlier = await self._files_at(db, self._conversation_files)
                known = {name: row for name, (row, _) in self._known.items()}
                self._sources = {
                    **dict.fromkeys(earlier, "assistant"),
                    **{name: source for name, (_, source) in self._known.items()},
                    **self._sources,
                }
                self._pending = {**earlier, **known, **self._pending}
                request.session_id = await self.session()
                result = await self.executor.execute(self.tenant, request)
                result.state_lost = True
        run = Run(id=new_id("exec_"), code=code, language=result.language, result=result)
        await self._save_outputs(run)
        self.runs.append(run)
        await self._audit(run)
        return run

    async def _save_outputs(self, run: Run) -> None:
        """Store what the run produced, within the export budget and the tenant's quota.

        Sizes are checked before anything is copied: a sparse file of a few KB in the sandbox
        reads as its full length. Whatever does not fit is skipped and reported.
        """
        settings = self.services.settings
        count = settings.max_output_files
        budget = settings.max_export_bytes
        for entry in run.result.files[:count]:
            if entry.size > budget:
                run.skipped.append(SkippedFile(entry.path, entry.size, "export_limit"))
                continue
            try:
                chunks = await self.executor.read_file(
                    self.tenant, run.result.session_id, entry.path
                )
            except SandboxFileNotFound:
                reason = "invalid_name" if "\ufffd" in entry.path else "unreadable"
                run.skipped.append(SkippedFile(entry.path, entry.size, reason))
                continue
            except ExecutorError:
                run.skipped.append(SkippedFile(entry.path, entry.size, "unreadable"))
                continue
            row = await self._store(posixpath.basename(entry.path), chunks, budget, run, entry)
            if row is not None:
                budget -= row.bytes
                cfile = await self._record(run, entry.path, row)
                run.files.append(SavedFile(row.id, row.filename, row.bytes, entry.path, cfile))
                if entry.path.startswith(DATA + "/"):
                    self._known[entry.path[len(DATA) + 1 :]] = (row, "assistant")
        count -= len(run.files)
        for output in run.result.results:
            for mime, ext in IMAGE_TYPES.items():
                if mime in output.data and count > 0:
                    data = base64.b64decode(output.data[mime])
                    name = f"image_{run.id[5:13]}_{len(run.images) + 1}.{ext}"
                    if len(data) > budget:
                        run.skipped.append(SkippedFile(name, len(data), "export_limit"))
                        break
                    row = await self._store(name, _once(data), budget, run)
                    if row is not None:
                        budget -= row.bytes
                        # Shown, not saved: a container file all the same, as OpenAI makes one.
                        cfile = await self._record(run, f"{DATA}/{row.filename}", row)
                        run.images.append(SavedFile(row.id, row.filename, row.bytes, None, cfile))
                        count -= 1
                    break

    async def _record(self, run: Run, path: str, row: File) -> str:
        record = await record_file(
            self.services.db,
            tenant=self.tenant,
            container_id=run.result.session_id,
            path=path,
            row=row,
            source="assistant",
        )
        return record.id

    async def _store(
        self,
        filename: str,
        chunks: AsyncIterator[bytes],
        budget: int,
        run: Run,
        entry: FileEntry | None = None,
    ) -> File | None:
        """Store one output; None (and a skipped entry) when a limit stops it."""
        settings = self.services.settings
        path = entry.path if entry is not None else filename
        try:
            return await store_file(
                self.services.db,
                self.services.blobs,
                tenant=self.tenant,
                filename=filename,
                purpose="assistants_output",
                chunks=chunks,
                max_bytes=min(settings.max_upload_bytes, budget),
                quota=settings.storage_quota_bytes,
            )
        except QuotaExceededError:
            reason = "storage_quota"
        except PayloadTooLargeError:
            # It grew past the budget while being copied.
            reason = "export_limit"
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()
        run.skipped.append(SkippedFile(path, entry.size if entry else 0, reason))
        return None

    async def _audit(self, run: Run) -> None:
        r = run.result
        status = "timeout" if r.timed_out else "error" if r.error or r.exit_code else "ok"
        keep = self.services.settings.execution_retention_days > 0
        output = {
            "stdout": r.stdout[:AUDIT_OUTPUT_CHARS],
            "stderr": r.stderr[:AUDIT_OUTPUT_CHARS],
            "error": r.error.model_dump() if r.error else None,
        }
        async with self.services.db() as db:
            db.add(
                Execution(
                    id=run.id,
                    tenant=self.tenant,
                    session_id=r.session_id,
                    source=self.source,
                    language=run.language,
                    status=status,
                    duration_ms=r.duration_ms,
                    created_at=int(time.time()),
                    code=_truncated(run.code, AUDIT_CODE_CHARS) if keep else None,
                    output=dumps(output).decode() if keep else None,
                    file_ids=dumps([f.file_id for f in run.files + run.images]).decode(),
                )
            )
            await db.commit()


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _truncated(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}\n…[{len(text) - limit} characters not kept]"
