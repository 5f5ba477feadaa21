"""How the proxy talks to one execution node over its internal HTTP API.

`Executor` is the interface. `executor.service.ExecutorService` implements it in-process (the
all-in-one `codeproxy serve`); `HttpExecutorClient` implements it over the internal HTTP API of
one node (`codeproxy proxy` keeps one per node in CODEPROXY_EXECUTOR_URL). Both raise
`executor.errors.ExecutorError`.
"""

import logging
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx

from executor.api import TENANT_HEADER, TOKEN_HEADER, relative_data_path
from executor.errors import (
    ExecutorError,
    SandboxUnavailable,
    Unauthorized,
    from_body,
)
from executor.models import ExecuteRequest, ExecutionResult, FileEntry, PoolHealth, SessionInfo

logger = logging.getLogger(__name__)


class HttpExecutorClient:
    """`Executor` over the internal HTTP API of one execution node.

    Several nodes are the proxy's business (`proxy.fleet`): it keeps one client per node and
    finds each session's node in the database.

    Errors come back as the `ExecutorError` the server raised; a node that cannot be reached is
    `SandboxUnavailable`. Cancelling a call closes its HTTP request, which the server notices
    and answers by cancelling the execution.
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        connect_timeout: float = 5.0,
        request_timeout: float = 30.0,
        exec_timeout_max: float = 300.0,
        max_connections: int = 100,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = base_url.rstrip("/")
        self._timeout = httpx.Timeout(request_timeout, connect=connect_timeout)
        # The server answers /execute only when the code is done: allow the longest run, plus
        # the interrupt grace, a sandbox restart and the file listing around it.
        self._execute_timeout = httpx.Timeout(
            exec_timeout_max + _EXECUTE_MARGIN, connect=connect_timeout
        )
        self._http = httpx.AsyncClient(
            base_url=self.url,
            headers={TOKEN_HEADER: token},
            timeout=self._timeout,
            limits=httpx.Limits(
                max_connections=max_connections, keepalive_expiry=_KEEPALIVE_EXPIRY
            ),
            transport=transport,
        )

    async def start(self) -> None:
        """Check the node accepts the token, so a wrong token stops start-up with a clear
        message; a node that cannot be reached yet is only logged (it may come up later)."""
        try:
            await self._request("GET", "/sessions", tenant="-")
        except Unauthorized:
            raise Unauthorized(
                f"The executor at {self.url} refused CODEPROXY_INTERNAL_TOKEN: set the same "
                "token on the proxy and on the executor."
            ) from None
        except SandboxUnavailable as exc:
            logger.warning("executor %s is not reachable yet: %s", self.url, exc.message)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def health(self) -> PoolHealth:
        """The node's capacity, load and identity (its /health, 200 or 503 alike)."""
        response = await self._request("GET", "/health", ok=(200, 503))
        try:
            return PoolHealth.model_validate(response.json())
        except ValueError:
            # A 503 from something in front of the executor has no PoolHealth body.
            raise SandboxUnavailable(
                f"The executor at {self.url} answered HTTP {response.status_code}."
            ) from None

    async def create_session(self, tenant: str) -> SessionInfo:
        response = await self._request("POST", "/sessions", tenant=tenant, ok=(201,))
        return SessionInfo.model_validate(response.json())

    async def get_session(self, tenant: str, session_id: str) -> SessionInfo:
        response = await self._on_session(tenant, session_id, "GET", "")
        return SessionInfo.model_validate(response.json())

    async def list_sessions(self, tenant: str) -> list[SessionInfo]:
        response = await self._request("GET", "/sessions", tenant=tenant)
        return [SessionInfo.model_validate(item) for item in response.json()["data"]]

    async def delete_session(self, tenant: str, session_id: str) -> None:
        await self._on_session(tenant, session_id, "DELETE", "", ok=(204,))

    async def execute(self, tenant: str, request: ExecuteRequest) -> ExecutionResult:
        """Run code remotely; cancelling this call closes the request, which stops the run."""
        response = await self._request(
            "POST",
            "/execute",
            tenant=tenant,
            json=request.model_dump(),
            http_timeout=self._execute_timeout,
        )
        return ExecutionResult.model_validate(response.json())

    async def upload_file(
        self, tenant: str, session_id: str, path: str, chunks: AsyncIterable[bytes]
    ) -> FileEntry:
        response = await self._request(
            "PUT", _file_path(session_id, path), tenant=tenant, content=chunks
        )
        return FileEntry.model_validate(response.json())

    async def read_file(self, tenant: str, session_id: str, path: str) -> AsyncIterator[bytes]:
        request = self._http.build_request(
            "GET", _file_path(session_id, path), headers={TENANT_HEADER: tenant}
        )
        try:
            response = await self._http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise _unreachable(self.url, exc) from exc
        if response.status_code != 200:
            try:
                await response.aread()
            finally:
                await response.aclose()
            raise _error(response)
        return _stream(response, self.url)

    async def list_files(self, tenant: str, session_id: str) -> list[FileEntry]:
        response = await self._on_session(tenant, session_id, "GET", "/files")
        return [FileEntry.model_validate(item) for item in response.json()["data"]]

    async def _on_session(
        self, tenant: str, session_id: str, method: str, suffix: str, ok: tuple[int, ...] = (200,)
    ) -> httpx.Response:
        path = f"/sessions/{quote(session_id, safe='')}{suffix}"
        return await self._request(method, path, tenant=tenant, ok=ok)

    async def _request(
        self,
        method: str,
        path: str,
        *,
        tenant: str | None = None,
        ok: tuple[int, ...] = (200,),
        json: Any = None,
        content: AsyncIterable[bytes] | None = None,
        http_timeout: httpx.Timeout | None = None,
    ) -> httpx.Response:
        headers = {TENANT_HEADER: tenant} if tenant is not None else {}
        try:
            response = await self._http.request(
                method,
                path,
                headers=headers,
                json=json,
                content=content,
                timeout=http_timeout if http_timeout is not None else self._timeout,
            )
        except httpx.TransportError as exc:
            raise _unreachable(self.url, exc) from exc
        if response.status_code not in ok:
            raise _error(response)
        return response


def _error(response: httpx.Response) -> ExecutorError:
    try:
        body = response.json()
    except ValueError:
        body = None
    return from_body(response.status_code, body, response.headers.get("retry-after"))


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
