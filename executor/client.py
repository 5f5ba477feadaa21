"""How the proxy talks to the execution service: one interface, two implementations.

`Executor` is the interface. `executor.service.ExecutorService` implements it in-process (the
all-in-one `codeproxy serve`); `HttpExecutorClient` implements it over the internal HTTP API
(`codeproxy proxy` with `CODEPROXY_EXECUTOR_URL`). Both raise `executor.errors.ExecutorError`.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from executor.api import TENANT_HEADER, TOKEN_HEADER, relative_data_path
from executor.errors import (
    CapacityExhausted,
    ExecutorError,
    NotFound,
    SandboxUnavailable,
    SessionNotFound,
    Unauthorized,
    from_body,
)
from executor.models import (
    ExecuteRequest,
    ExecutionResult,
    FileEntry,
    PoolHealth,
    SessionInfo,
    SessionOptions,
)

logger = logging.getLogger(__name__)


class HttpExecutorClient:
    """`Executor` over the internal HTTP API of one or more execution services.

    New sessions go to the node with the fewest sessions this client knows of (round-robin
    among equals), falling over to the next node when one is full or unreachable. The client
    remembers which node holds each session and asks every node about a session it does not
    know (another proxy process may have created it).

    Errors come back as the `ExecutorError` the server raised; a node that cannot be reached is
    `SandboxUnavailable`. Cancelling a call closes its HTTP request, which the server notices
    and answers by cancelling the execution.
    """

    def __init__(
        self,
        base_urls: list[str],
        token: str,
        *,
        connect_timeout: float = 5.0,
        request_timeout: float = 30.0,
        exec_timeout_max: float = 300.0,
        max_connections: int = 100,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not base_urls:
            raise ValueError("HttpExecutorClient needs at least one executor URL")
        self._nodes = [url.rstrip("/") for url in base_urls]
        self._timeout = httpx.Timeout(request_timeout, connect=connect_timeout)
        # The server answers /execute only when the code is done: allow the longest run, plus
        # the interrupt grace, a sandbox restart and the file listing around it.
        self._execute_timeout = httpx.Timeout(
            exec_timeout_max + _EXECUTE_MARGIN, connect=connect_timeout
        )
        self._http = httpx.AsyncClient(
            headers={TOKEN_HEADER: token},
            timeout=self._timeout,
            limits=httpx.Limits(
                max_connections=max_connections, keepalive_expiry=_KEEPALIVE_EXPIRY
            ),
            transport=transport,
        )
        self._routes: dict[str, _Route] = {}
        self._next = 0

    async def start(self) -> None:
        """Check every node accepts the token, so a wrong token stops start-up with a clear
        message; a node that cannot be reached yet is only logged (it may come up later)."""
        for node in self._nodes:
            try:
                await self._request(node, "GET", "/sessions", tenant="-")
            except Unauthorized:
                raise Unauthorized(
                    f"The executor at {node} refused CODEPROXY_INTERNAL_TOKEN: set the same "
                    "token on the proxy and on the executor."
                ) from None
            except SandboxUnavailable as exc:
                logger.warning("executor %s is not reachable yet: %s", node, exc.message)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def health(self) -> PoolHealth:
        """The capacity of all nodes together; degraded if any node is degraded or down."""
        results = await asyncio.gather(
            *(self._request(node, "GET", "/health", ok=(200, 503)) for node in self._nodes),
            return_exceptions=True,
        )
        healths: list[PoolHealth] = []
        for result in results:
            if isinstance(result, httpx.Response):
                # A 503 from something in front of the executor has no PoolHealth body.
                with contextlib.suppress(ValueError):
                    healths.append(PoolHealth.model_validate(result.json()))
            elif not isinstance(result, ExecutorError):
                raise result
        degraded = len(healths) < len(self._nodes) or any(h.status != "ok" for h in healths)
        return PoolHealth(
            status="degraded" if degraded else "ok",
            backend=healths[0].backend if healths else "unknown",
            warm=sum(h.warm for h in healths),
            sandboxes=sum(h.sandboxes for h in healths),
            max_sandboxes=sum(h.max_sandboxes for h in healths),
            busy=sum(h.busy for h in healths),
        )

    async def create_session(
        self, tenant: str, options: SessionOptions | None = None
    ) -> SessionInfo:
        body = options.model_dump(exclude_none=True) if options is not None else {}
        last_error: ExecutorError | None = None
        for node in self._placement():
            try:
                response = await self._request(
                    node, "POST", "/sessions", tenant=tenant, ok=(201,), json=body
                )
            except (CapacityExhausted, SandboxUnavailable) as exc:
                last_error = exc
                continue
            info = SessionInfo.model_validate(response.json())
            self._remember(info, node)
            return info
        assert last_error is not None
        raise last_error

    async def get_session(self, tenant: str, session_id: str) -> SessionInfo:
        response = await self._on_session(tenant, session_id, "GET", "")
        return SessionInfo.model_validate(response.json())

    async def list_sessions(self, tenant: str) -> list[SessionInfo]:
        results = await asyncio.gather(
            *(self._request(node, "GET", "/sessions", tenant=tenant) for node in self._nodes),
            return_exceptions=True,
        )
        sessions: list[SessionInfo] = []
        for node, result in zip(self._nodes, results, strict=True):
            if isinstance(result, BaseException):
                # One node down must not hide the others' sessions; all down is an error.
                if len(self._nodes) == 1 or not isinstance(result, SandboxUnavailable):
                    raise result
                continue
            for item in result.json()["data"]:
                info = SessionInfo.model_validate(item)
                self._remember(info, node)
                sessions.append(info)
        return sessions

    async def delete_session(self, tenant: str, session_id: str) -> None:
        await self._on_session(tenant, session_id, "DELETE", "", ok=(204,))
        self._routes.pop(session_id, None)

    async def execute(self, tenant: str, request: ExecuteRequest) -> ExecutionResult:
        """Run code remotely; cancelling this call closes the request, which stops the run."""
        node = await self._node_of(tenant, request.session_id)
        response = await self._request(
            node,
            "POST",
            "/execute",
            tenant=tenant,
            json=request.model_dump(),
            http_timeout=self._execute_timeout,
            session_id=request.session_id,
        )
        return ExecutionResult.model_validate(response.json())

    async def upload_file(
        self, tenant: str, session_id: str, path: str, chunks: AsyncIterable[bytes]
    ) -> FileEntry:
        # The body is a one-shot stream, so find the node before sending it.
        node = await self._node_of(tenant, session_id)
        response = await self._request(
            node,
            "PUT",
            _file_path(session_id, path),
            tenant=tenant,
            content=chunks,
            session_id=session_id,
        )
        return FileEntry.model_validate(response.json())

    async def read_file(self, tenant: str, session_id: str, path: str) -> AsyncIterator[bytes]:
        node = await self._node_of(tenant, session_id)
        url = node + _file_path(session_id, path)
        request = self._http.build_request("GET", url, headers={TENANT_HEADER: tenant})
        try:
            response = await self._http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise _unreachable(node, exc) from exc
        if response.status_code != 200:
            try:
                await response.aread()
            finally:
                await response.aclose()
            raise self._error(response, session_id)
        return _stream(response, node)

    async def list_files(self, tenant: str, session_id: str) -> list[FileEntry]:
        response = await self._on_session(tenant, session_id, "GET", "/files")
        return [FileEntry.model_validate(item) for item in response.json()["data"]]

    def _placement(self) -> list[str]:
        """Nodes in the order to try for a new session: least loaded first, rotating ties."""
        now = time.monotonic()
        # Sessions the nodes have expired by now neither count nor stay in memory.
        for session_id in [k for k, r in self._routes.items() if r.expires < now]:
            del self._routes[session_id]
        load = dict.fromkeys(self._nodes, 0)
        for route in self._routes.values():
            if route.node in load:
                load[route.node] += 1
        start = self._next % len(self._nodes)
        self._next += 1
        rotated = self._nodes[start:] + self._nodes[:start]
        return sorted(rotated, key=lambda node: load[node])

    async def _node_of(self, tenant: str, session_id: str) -> str:
        route = self._routes.get(session_id)
        if route is not None:
            return route.node
        if len(self._nodes) == 1:
            return self._nodes[0]
        path = f"/sessions/{quote(session_id, safe='')}"
        results = await asyncio.gather(
            *(self._request(n, "GET", path, tenant=tenant) for n in self._nodes),
            return_exceptions=True,
        )
        for candidate, result in zip(self._nodes, results, strict=True):
            if isinstance(result, httpx.Response):
                self._remember(SessionInfo.model_validate(result.json()), candidate)
                return candidate
        unexpected = [
            r for r in results if isinstance(r, BaseException) and not isinstance(r, NotFound)
        ]
        if unexpected:
            raise unexpected[0]
        raise SessionNotFound(f"No session found with id {session_id!r}.", param="session_id")

    async def _on_session(
        self, tenant: str, session_id: str, method: str, suffix: str, ok: tuple[int, ...] = (200,)
    ) -> httpx.Response:
        node = await self._node_of(tenant, session_id)
        path = f"/sessions/{quote(session_id, safe='')}{suffix}"
        return await self._request(node, method, path, tenant=tenant, ok=ok, session_id=session_id)

    async def _request(
        self,
        node: str,
        method: str,
        path: str,
        *,
        tenant: str | None = None,
        ok: tuple[int, ...] = (200,),
        json: Any = None,
        content: AsyncIterable[bytes] | None = None,
        http_timeout: httpx.Timeout | None = None,
        session_id: str | None = None,
    ) -> httpx.Response:
        headers = {TENANT_HEADER: tenant} if tenant is not None else {}
        try:
            response = await self._http.request(
                method,
                node + path,
                headers=headers,
                json=json,
                content=content,
                timeout=http_timeout if http_timeout is not None else self._timeout,
            )
        except httpx.TransportError as exc:
            raise _unreachable(node, exc) from exc
        if response.status_code not in ok:
            raise self._error(response, session_id)
        if session_id is not None and (route := self._routes.get(session_id)) is not None:
            route.expires = time.monotonic() + route.idle
        return response

    def _error(self, response: httpx.Response, session_id: str | None) -> ExecutorError:
        try:
            body = response.json()
        except ValueError:
            body = None
        error = from_body(response.status_code, body, response.headers.get("retry-after"))
        if isinstance(error, SessionNotFound) and session_id is not None:
            self._routes.pop(session_id, None)
        return error

    def _remember(self, info: SessionInfo, node: str) -> None:
        # The node reports when it would expire the session; each use pushes that back.
        idle = max(info.expires_at - info.last_active_at, 0.0)
        self._routes[info.id] = _Route(node, idle, time.monotonic() + idle)


@dataclass
class _Route:
    """Where a session lives, and until when it lives there if left unused."""

    node: str
    idle: float
    expires: float


# Headroom over exec_timeout_max for the interrupt grace, a sandbox restart and the listing.
_EXECUTE_MARGIN = 60.0
# Below the server's keep-alive timeout, so we never reuse a connection it is closing.
_KEEPALIVE_EXPIRY = 15.0


async def _stream(response: httpx.Response, node: str) -> AsyncIterator[bytes]:
    try:
        async for chunk in response.aiter_bytes():
            yield chunk
    except httpx.TransportError as exc:
        raise _unreachable(node, exc) from exc
    finally:
        await response.aclose()


def _file_path(session_id: str, path: str) -> str:
    # Normalised here so a bad path fails before any request, exactly as in-process.
    relative = quote(relative_data_path(path))
    return f"/sessions/{quote(session_id, safe='')}/files/{relative}"


def _unreachable(node: str, exc: httpx.TransportError) -> SandboxUnavailable:
    kind = "timed out" if isinstance(exc, httpx.TimeoutException) else "is unreachable"
    return SandboxUnavailable(f"The executor at {node} {kind}: {type(exc).__name__}.")
