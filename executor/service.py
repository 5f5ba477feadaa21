"""The execution service in-process: tenants' sessions on top of the sandbox pool.

`ExecutorService` implements `executor.client.Executor`. The all-in-one proxy calls it directly;
the internal HTTP API (`executor.app`) serves it to remote proxies.

A session leases one sandbox from the pool for its whole life. One execution runs at a time per
session (an `asyncio.Lock`, the *lease*); the code runs in an inner task so that deleting the
session or shutting down can stop it without cancelling the caller's own task.
"""

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

from codeproxy import logs
from executor.api import DATA_DIR, check_code, relative_data_path
from executor.backend import Sandbox, SandboxBackend
from executor.errors import (
    ExecutorError,
    FileTooLarge,
    InvalidRequest,
    SandboxUnavailable,
    SessionNotFound,
)
from executor.languages import Language, parse_language
from executor.metrics import ExecutorMetrics, MeasuredBackend, PoolState
from executor.models import (
    ExecuteRequest,
    ExecutionResult,
    FileEntry,
    PoolHealth,
    RunOutcome,
    SessionInfo,
)
from executor.node import new_boot_id, node_id
from executor.pool import SandboxPool
from executor.settings import ExecutorSettings

logger = logging.getLogger(__name__)


def make_backend(settings: ExecutorSettings) -> SandboxBackend:
    """The backend named by `settings.sandbox_backend`, imported only when chosen."""
    if settings.sandbox_backend == "e2b":
        from executor.e2b import E2BBackend

        return E2BBackend(settings)
    from executor.local.backend import LocalBackend

    backend: SandboxBackend = LocalBackend(settings)
    return backend


@dataclass(eq=False)
class _Session:
    id: str
    tenant: str
    sandbox: Sandbox | None
    created_at: float
    last_active_at: float
    executions: int = 0
    deleted: bool = False
    # Set when the sandbox was replaced, so the next execution reports the lost state.
    state_lost: bool = False
    # /mnt/data as the last execution left it; the next one diffs against it instead of
    # listing again. Anything that changes files outside an execution resets it.
    files_seen: list[FileEntry] | None = None
    lease: asyncio.Lock = field(default_factory=asyncio.Lock)
    running: asyncio.Task[RunOutcome] | None = None

    @property
    def busy(self) -> bool:
        return self.lease.locked()

    def touch(self) -> None:
        self.last_active_at = time.time()

    def info(self, idle_timeout: float) -> SessionInfo:
        return SessionInfo(
            id=self.id,
            tenant=self.tenant,
            status="busy" if self.busy else "active",
            created_at=self.created_at,
            last_active_at=self.last_active_at,
            expires_at=self.last_active_at + idle_timeout,
            executions=self.executions,
        )


class ExecutorService:
    """Sandbox sessions for tenants, run in this process."""

    def __init__(
        self,
        settings: ExecutorSettings,
        backend: SandboxBackend | None = None,
        *,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._settings = settings
        self.metrics = ExecutorMetrics(registry if registry is not None else CollectorRegistry())
        self._backend = backend if backend is not None else make_backend(settings)
        self._pool = SandboxPool(
            # The pool starts every sandbox: measured there, all starts are counted.
            MeasuredBackend(self._backend, self.metrics),
            size=settings.pool_size,
            max_sandboxes=settings.max_sandboxes,
            max_per_tenant=settings.max_sandboxes_per_tenant,
            acquire_timeout=settings.acquire_timeout,
        )
        self._sessions: dict[str, _Session] = {}
        self._node_id = node_id(settings.node_id, settings.port)
        self._boot_id = new_boot_id()
        self._waiting = 0
        self.metrics.watch_pool(self._pool_state)
        self._reaper: asyncio.Task[None] | None = None
        self._disposals: set[asyncio.Task[None]] = set()
        self._running = False
        self._closed = False

    async def start(self) -> None:
        """Start the backend, the warm pool and the idle-session reaper."""
        try:
            await self._backend.start()
            await self._pool.start()
        except BaseException:
            await self.aclose()
            raise
        self._reaper = asyncio.create_task(self._reap_forever(), name="session-reaper")
        self._running = True

    async def aclose(self) -> None:
        """Stop every session's code, close every sandbox, and stop the background tasks."""
        if self._closed:
            return
        self._closed = True
        self._running = False
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.gather(self._reaper, return_exceptions=True)
        sessions = list(self._sessions.values())
        self._sessions.clear()
        await asyncio.gather(*(self._dispose(s) for s in sessions), return_exceptions=True)
        if self._disposals:
            await asyncio.gather(*self._disposals, return_exceptions=True)
        await self._pool.aclose()
        await self._backend.aclose()

    async def health(self) -> PoolHealth:
        healthy = self._running and self._pool.last_error is None
        return PoolHealth(
            status="ok" if healthy else "degraded",
            backend=self._backend.name,
            warm=self._pool.warm,
            sandboxes=self._pool.slots,
            max_sandboxes=self._pool.max_sandboxes,
            busy=sum(1 for s in self._sessions.values() if s.busy),
            node_id=self._node_id,
            boot_id=self._boot_id,
            sessions=len(self._sessions),
        )

    def _pool_state(self) -> PoolState:
        return PoolState(
            warm=self._pool.warm,
            sandboxes=self._pool.slots,
            capacity=self._pool.max_sandboxes,
            busy=sum(1 for s in self._sessions.values() if s.busy),
            sessions=len(self._sessions),
            waiting=self._waiting,
        )

    async def create_session(self, tenant: str) -> SessionInfo:
        self._require_running()
        if self._pool.at_capacity(tenant):
            # Expired sessions may still hold capacity until the next reaper pass.
            await self._reap_expired()
        if self._pool.leases(tenant) >= self._settings.max_sandboxes_per_tenant:
            self._evict_idle(tenant)
        self._waiting += 1
        try:
            sandbox = await self._pool.acquire(tenant)
        finally:
            self._waiting -= 1
        now = time.time()
        session = _Session(
            id=f"cntr_{secrets.token_hex(16)}",
            tenant=tenant,
            sandbox=sandbox,
            created_at=now,
            last_active_at=now,
        )
        if not self._running:
            # Shut down while the sandbox was starting.
            await self._pool.release(tenant, sandbox)
            raise SandboxUnavailable("The executor is shutting down.")
        self._sessions[session.id] = session
        logger.info("session %s created for tenant %s on %s", session.id, tenant, sandbox.id)
        info = session.info(self._settings.session_idle_timeout)
        return info.model_copy(update={"node_id": self._node_id, "boot_id": self._boot_id})

    async def get_session(self, tenant: str, session_id: str) -> SessionInfo:
        return self._session(tenant, session_id).info(self._settings.session_idle_timeout)

    async def list_sessions(self, tenant: str) -> list[SessionInfo]:
        idle = self._settings.session_idle_timeout
        now = time.time()
        return [
            s.info(idle)
            for s in self._sessions.values()
            if s.tenant == tenant and not self._expired(s, now)
        ]

    async def delete_session(self, tenant: str, session_id: str) -> None:
        session = self._session(tenant, session_id)
        self._sessions.pop(session.id, None)
        self.metrics.sessions_ended.labels("deleted").inc()
        logger.info("session %s deleted", session.id)
        await self._dispose(session)

    async def execute(self, tenant: str, request: ExecuteRequest) -> ExecutionResult:
        """Run code in the session; cancelling the call interrupts the code and frees the lease."""
        language = parse_language(request.language)
        check_code(request.code, self._settings.max_code_bytes)
        timeout = self._timeout(request.timeout)
        session = self._session(tenant, request.session_id)
        async with session.lease:
            if session.deleted:
                raise self._gone(session.id)
            session.touch()
            try:
                sandbox = await self._live_sandbox(session)
                before = session.files_seen
                session.files_seen = None
                if before is None:
                    before = await sandbox.list_files()
                outcome = await self._run(session, sandbox, request.code, language, timeout)
                self.metrics.record(language.value, outcome)
                if session.deleted:
                    raise self._gone(session.id)
                files = await self._changed_files(session, sandbox, before)
                session.executions += 1
                state_lost = outcome.state_lost or session.state_lost
                session.state_lost = False
            finally:
                session.touch()
        return ExecutionResult.model_validate(
            {
                **outcome.model_dump(),
                "state_lost": state_lost,
                "session_id": session.id,
                "language": language.value,
                "files": files,
            }
        )

    async def upload_file(
        self, tenant: str, session_id: str, path: str, chunks: AsyncIterable[bytes]
    ) -> FileEntry:
        relative = relative_data_path(path)
        session = self._session(tenant, session_id)
        session.touch()
        sandbox = await self._usable_sandbox(session)
        session.files_seen = None
        limit = self._settings.max_file_bytes
        try:
            return await sandbox.write_file(relative, _capped(chunks, limit), max_bytes=limit)
        finally:
            # Again: an execution may have listed the files while the upload was running.
            session.files_seen = None
            session.touch()

    async def read_file(self, tenant: str, session_id: str, path: str) -> AsyncIterator[bytes]:
        relative = relative_data_path(path)
        session = self._session(tenant, session_id)
        session.touch()
        sandbox = await self._usable_sandbox(session)
        return await sandbox.read_file(relative)

    async def list_files(self, tenant: str, session_id: str) -> list[FileEntry]:
        session = self._session(tenant, session_id)
        session.touch()
        sandbox = await self._usable_sandbox(session)
        return await sandbox.list_files()

    def _require_running(self) -> None:
        if not self._running:
            raise SandboxUnavailable("The executor is not running.")

    def _timeout(self, requested: float | None) -> float:
        maximum = self._settings.exec_timeout_max
        if requested is None:
            return min(self._settings.exec_timeout, maximum)
        if requested > maximum:
            raise InvalidRequest(
                f"timeout must be at most {maximum:g} seconds, got {requested:g}.",
                param="timeout",
            )
        return requested

    def _session(self, tenant: str, session_id: str) -> _Session:
        """The tenant's live session; anything else (including another tenant's) is not found."""
        session = self._sessions.get(session_id)
        if session is None or session.tenant != tenant:
            raise self._gone(session_id)
        logs.session_id.set(session_id)
        if self._expired(session, time.time()):
            self._sessions.pop(session.id, None)
            self.metrics.sessions_ended.labels("expired").inc()
            self._dispose_later(session)
            raise self._gone(session_id)
        return session

    @staticmethod
    def _gone(session_id: str) -> SessionNotFound:
        return SessionNotFound(f"No session found with id {session_id!r}.", param="session_id")

    def _expired(self, session: _Session, now: float) -> bool:
        idle = now - session.last_active_at
        return not session.busy and idle >= self._settings.session_idle_timeout

    async def _live_sandbox(self, session: _Session) -> Sandbox:
        """The session's sandbox, replaced first if it died. Call with the lease held."""
        if session.deleted:
            # Its slot went back to the pool: a replacement would have none.
            raise self._gone(session.id)
        if session.sandbox is not None and session.sandbox.alive:
            return session.sandbox
        dead, session.sandbox = session.sandbox, None
        session.files_seen = None
        logger.warning("session %s lost its sandbox; replacing it", session.id)
        session.state_lost = True
        session.sandbox = await self._pool.renew(dead)
        return session.sandbox

    async def _usable_sandbox(self, session: _Session) -> Sandbox:
        """For file operations, which need no lease unless the sandbox must be replaced."""
        if session.sandbox is not None and session.sandbox.alive:
            return session.sandbox
        async with session.lease:
            if session.deleted:
                raise self._gone(session.id)
            return await self._live_sandbox(session)

    async def _run(
        self, session: _Session, sandbox: Sandbox, code: str, language: Language, seconds: float
    ) -> RunOutcome:
        if session.deleted:
            raise self._gone(session.id)
        task = asyncio.create_task(
            sandbox.run(
                code, language, timeout=seconds, max_output_bytes=self._settings.max_output_bytes
            ),
            name=f"run-{session.id}",
        )
        session.running = task
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                # Our caller was cancelled (a client disconnect): stop the code, then unwind.
                task.cancel()
                await _settle(task)
                raise
            # Only the inner task was cancelled: the session was deleted or we shut down.
            if self._closed:
                raise SandboxUnavailable("The executor is shutting down.") from None
            raise self._gone(session.id) from None
        finally:
            session.running = None

    async def _changed_files(
        self, session: _Session, sandbox: Sandbox, before: list[FileEntry]
    ) -> list[FileEntry]:
        try:
            after = await sandbox.list_files()
        except ExecutorError:
            logger.warning("listing %s after an execution failed", DATA_DIR, exc_info=True)
            return []
        session.files_seen = after
        seen = {f.path: (f.size, f.modified) for f in before}
        return [f for f in after if seen.get(f.path) != (f.size, f.modified)]

    async def _dispose(self, session: _Session) -> None:
        """Stop a removed session's code and give its sandbox back to the pool."""
        session.deleted = True
        if session.running is not None:
            session.running.cancel()
        # A cancelled run interrupts, waits the grace, then kills; if it still has not let go
        # by then, closing the sandbox under it is what ends it.
        try:
            await asyncio.wait_for(session.lease.acquire(), 2 * self._settings.interrupt_grace + 3)
        except TimeoutError:
            logger.warning("session %s did not stop in time; closing its sandbox", session.id)
            held = False
        else:
            held = True
        try:
            sandbox, session.sandbox = session.sandbox, None
            await self._pool.release(session.tenant, sandbox)
        finally:
            if held:
                session.lease.release()

    def _dispose_later(self, session: _Session) -> None:
        task = asyncio.create_task(self._dispose(session), name=f"dispose-{session.id}")
        self._disposals.add(task)
        task.add_done_callback(self._disposals.discard)

    def _evict_idle(self, tenant: str) -> None:
        """Make room in a tenant's share by ending its least recently used idle session.

        A tenant competes only with itself here: its oldest conversation loses its sandbox
        rather than its newest request failing. Busy sessions are never taken.
        """
        idle = [s for s in self._sessions.values() if s.tenant == tenant and not s.busy]
        if not idle:
            return
        oldest = min(idle, key=lambda s: s.last_active_at)
        self._sessions.pop(oldest.id, None)
        self.metrics.sessions_ended.labels("evicted").inc()
        logger.info("session %s ended to make room for a new one of its tenant", oldest.id)
        # It is idle, so nothing runs in it: its sandbox can close while the new one starts.
        oldest.deleted = True
        sandbox, oldest.sandbox = oldest.sandbox, None
        self._pool.release_later(tenant, sandbox)

    async def _reap_expired(self) -> None:
        now = time.time()
        expired = [s for s in self._sessions.values() if self._expired(s, now)]
        for session in expired:
            self._sessions.pop(session.id, None)
            self.metrics.sessions_ended.labels("expired").inc()
            logger.info("session %s expired after idling", session.id)
        await asyncio.gather(*(self._dispose(s) for s in expired), return_exceptions=True)

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self._settings.reaper_interval)
            try:
                await self._reap_expired()
            except Exception:
                logger.exception("reaping idle sessions failed")


async def _settle(task: asyncio.Task[RunOutcome]) -> None:
    """Wait for a cancelled task to finish its cleanup, consuming its outcome."""
    await asyncio.wait({task})
    if not task.cancelled() and task.exception() is not None:
        logger.warning("sandbox run failed while being cancelled", exc_info=task.exception())


async def _capped(chunks: AsyncIterable[bytes], limit: int) -> AsyncIterator[bytes]:
    """Pass chunks through, refusing more than `limit` bytes whatever the backend checks."""
    total = 0
    async for chunk in chunks:
        total += len(chunk)
        if total > limit:
            raise FileTooLarge(f"The file exceeds the limit of {limit} bytes.", param="file")
        yield chunk
