"""Many execution nodes behind one `Executor`, coordinated through the database.

Every API process polls the nodes of CODEPROXY_EXECUTOR_URL (their /health names the node, its
boot and its load) and records what it sees in `exec_nodes`; a node nobody has heard from for
`node_dead_after` seconds is marked dead. New sessions go to the least loaded live node; each
session's row names its node and that node's boot, so any process finds a session's node with
one lookup. A session whose node is dead or has restarted (another boot id) is lost: callers
see SessionNotFound, as for a session that expired while idle, and the chat loop starts a new
sandbox with the conversation's files put back.

The executor package knows nothing of this: nodes only answer their internal API.
"""

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import TypeVar

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from executor.api import (
    CapacityExhausted,
    ExecuteRequest,
    ExecutionResult,
    ExecutorError,
    FileEntry,
    PoolHealth,
    SandboxUnavailable,
    SessionInfo,
    SessionNotFound,
)
from executor.client import HttpExecutorClient
from storage.models import ExecNode, SandboxSession
from storage.nodes import (
    ALIVE,
    Heartbeat,
    add_session,
    all_nodes,
    find_session,
    forget_session,
    live_nodes,
    mark_dead,
    note_placement,
    purge_sessions,
    record_heartbeat,
    tenant_nodes,
    touch_session,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Fleet:
    """`Executor` over the execution nodes at `urls`, placed and found through the database."""

    def __init__(
        self,
        urls: list[str],
        token: str,
        db: async_sessionmaker[AsyncSession],
        *,
        heartbeat_interval: float,
        dead_after: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not urls:
            raise ValueError("Fleet needs at least one executor URL")
        self._urls = [url.rstrip("/") for url in urls]
        self._token = token
        self._db = db
        self._interval = heartbeat_interval
        self._dead_after = dead_after
        self._clock = clock
        self._clients = {url: HttpExecutorClient(url, token) for url in self._urls}
        self._heartbeats: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Check every node takes the token, record the reachable ones, start polling."""
        try:
            for client in self._clients.values():
                await client.start()
            await self._poll(force=True)
        except BaseException:
            await self.aclose()
            raise
        self._heartbeats = asyncio.create_task(self._poll_forever(), name="node-heartbeats")

    async def aclose(self) -> None:
        if self._heartbeats is not None:
            self._heartbeats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeats
        await asyncio.gather(*(c.aclose() for c in self._clients.values()))

    async def health(self) -> PoolHealth:
        """All configured nodes, asked now: degraded if any is degraded or unreachable."""
        healths = await self._poll(force=True)
        degraded = len(healths) < len(self._urls) or any(h.status != "ok" for h in healths)
        return PoolHealth(
            status="degraded" if degraded else "ok",
            backend=healths[0].backend if healths else "unknown",
            warm=sum(h.warm for h in healths),
            sandboxes=sum(h.sandboxes for h in healths),
            max_sandboxes=sum(h.max_sandboxes for h in healths),
            busy=sum(h.busy for h in healths),
            sessions=sum(h.sessions for h in healths),
        )

    async def create_session(self, tenant: str) -> SessionInfo:
        async with self._db() as db:
            nodes = await live_nodes(db)
        if not nodes:
            raise SandboxUnavailable(
                "No execution node is available: none of CODEPROXY_EXECUTOR_URL has answered "
                f"in the last {self._dead_after:g} seconds."
            )
        # Least loaded first; ties in random order, so that processes do not all pick the same.
        nodes.sort(key=lambda n: (n.sessions / max(n.capacity, 1), random.random()))
        last_error: ExecutorError | None = None
        for node in nodes:
            try:
                info = await self._client(node.url).create_session(tenant)
            except (CapacityExhausted, SandboxUnavailable) as exc:
                last_error = exc
                continue
            await self._record(info, tenant, node)
            return info
        assert last_error is not None
        raise last_error

    async def get_session(self, tenant: str, session_id: str) -> SessionInfo:
        client = await self._route(tenant, session_id)
        return await self._forgetting(session_id, client.get_session(tenant, session_id))

    async def list_sessions(self, tenant: str) -> list[SessionInfo]:
        async with self._db() as db:
            nodes = await tenant_nodes(db, tenant=tenant)
        results = await asyncio.gather(
            *(self._client(n.url).list_sessions(tenant) for n in nodes), return_exceptions=True
        )
        sessions: list[SessionInfo] = []
        for result in results:
            if isinstance(result, SandboxUnavailable):
                continue  # one node down must not hide the others' sessions
            if isinstance(result, BaseException):
                raise result
            sessions.extend(result)
        return sessions

    async def delete_session(self, tenant: str, session_id: str) -> None:
        client = await self._route(tenant, session_id)
        await self._forgetting(session_id, client.delete_session(tenant, session_id))
        async with self._db() as db:
            await forget_session(db, session_id=session_id)

    async def execute(self, tenant: str, request: ExecuteRequest) -> ExecutionResult:
        client = await self._route(tenant, request.session_id)
        result = await self._forgetting(request.session_id, client.execute(tenant, request))
        async with self._db() as db:
            await touch_session(db, session_id=request.session_id, now=self._clock())
        return result

    async def upload_file(
        self, tenant: str, session_id: str, path: str, chunks: AsyncIterable[bytes]
    ) -> FileEntry:
        client = await self._route(tenant, session_id)
        return await self._forgetting(
            session_id, client.upload_file(tenant, session_id, path, chunks)
        )

    async def read_file(self, tenant: str, session_id: str, path: str) -> AsyncIterator[bytes]:
        client = await self._route(tenant, session_id)
        return await self._forgetting(session_id, client.read_file(tenant, session_id, path))

    async def list_files(self, tenant: str, session_id: str) -> list[FileEntry]:
        client = await self._route(tenant, session_id)
        return await self._forgetting(session_id, client.list_files(tenant, session_id))

    def _client(self, url: str) -> HttpExecutorClient:
        # A node another process recorded under a URL this one was not given is reached too.
        client = self._clients.get(url)
        if client is None:
            client = self._clients[url] = HttpExecutorClient(url, self._token)
        return client

    async def _route(self, tenant: str, session_id: str) -> HttpExecutorClient:
        """The client of the node holding the tenant's session; SessionNotFound if it is lost."""
        async with self._db() as db:
            found = await find_session(db, session_id=session_id)
        if found is None or found[0].tenant != tenant:
            raise SessionNotFound(f"No session found with id {session_id!r}.", param="session_id")
        row, node = found
        if node is None or node.state != ALIVE or node.boot_id != row.boot_id:
            raise SessionNotFound(
                f"Session {session_id!r} was lost: the execution node that held it stopped or "
                "restarted. Start a new session.",
                param="session_id",
            )
        return self._client(node.url)

    async def _forgetting(self, session_id: str, call: Awaitable[T]) -> T:
        """`call`'s result; a session its node no longer knows is forgotten here too."""
        try:
            return await call
        except SessionNotFound:
            async with self._db() as db:
                await forget_session(db, session_id=session_id)
            raise

    async def _record(self, info: SessionInfo, tenant: str, node: ExecNode) -> None:
        now = self._clock()
        node_id, boot_id = info.node_id or node.id, info.boot_id or node.boot_id
        async with self._db() as db:
            await add_session(
                db,
                SandboxSession(
                    id=info.id,
                    tenant=tenant,
                    node_id=node_id,
                    boot_id=boot_id,
                    created_at=now,
                    expires_at=now + max(info.expires_at - info.last_active_at, 0.0),
                    idle_seconds=max(info.expires_at - info.last_active_at, 0.0),
                ),
            )
            await note_placement(db, node_id=node_id, boot_id=boot_id)

    async def _poll(self, *, force: bool) -> list[PoolHealth]:
        """Ask the nodes how they are and record it; returns what the reachable ones said.

        Without `force`, a node another process has heard from in the last half interval is
        left alone: the fleet's processes share the polling instead of each doing all of it.
        """
        now = self._clock()
        async with self._db() as db:
            seen = {n.url: n for n in await all_nodes(db)}
        urls = [
            url
            for url in self._urls
            if force
            or url not in seen
            or seen[url].state != ALIVE
            or now - seen[url].last_seen_at >= self._interval / 2
        ]
        results = await asyncio.gather(
            *(self._clients[url].health() for url in urls), return_exceptions=True
        )
        healths: list[PoolHealth] = []
        async with self._db() as db:
            for url, result in zip(urls, results, strict=True):
                if isinstance(result, ExecutorError):
                    logger.debug("node %s did not answer: %s", url, result.message)
                    continue
                if isinstance(result, BaseException):
                    raise result
                healths.append(result)
                if result.node_id is None or result.boot_id is None:
                    logger.warning("the executor at %s does not name itself; ignored", url)
                    continue
                known = seen.get(url)
                if known is None or known.boot_id != result.boot_id or known.state != ALIVE:
                    logger.info("node %s at %s is up (%s)", result.node_id, url, result.boot_id)
                await record_heartbeat(db, _heartbeat(url, result), now=self._clock())
            for node_id in await mark_dead(db, silent_since=now - self._dead_after):
                logger.warning(
                    "node %s has not answered for %g seconds: marked dead, its sessions are lost",
                    node_id,
                    self._dead_after,
                )
            await purge_sessions(db, now=now)
        return healths

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self._poll(force=False)
            except Exception:
                logger.exception("polling the execution nodes failed; retrying")


def _heartbeat(url: str, health: PoolHealth) -> Heartbeat:
    assert health.node_id is not None and health.boot_id is not None
    return Heartbeat(
        node_id=health.node_id,
        url=url,
        boot_id=health.boot_id,
        backend=health.backend,
        capacity=health.max_sandboxes,
        sandboxes=health.sandboxes,
        sessions=health.sessions,
        busy=health.busy,
        warm=health.warm,
    )
