"""How the proxy talks to the execution service: one interface, two implementations.

`Executor` is the interface. `executor.service.ExecutorService` implements it in-process (the
all-in-one `codeproxy serve`); `HttpExecutorClient` implements it over the internal HTTP API
(`codeproxy proxy` with `CODEPROXY_EXECUTOR_URL`). Both raise `executor.errors.ExecutorError`.
"""

from collections.abc import AsyncIterable, AsyncIterator
from typing import Protocol

from executor.models import ExecuteRequest, ExecutionResult, FileEntry, PoolHealth, SessionInfo


class Executor(Protocol):
    """Tenant-scoped access to sandbox sessions. Another tenant's session is SessionNotFound."""

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    async def health(self) -> PoolHealth: ...

    async def create_session(self, tenant: str) -> SessionInfo: ...

    async def get_session(self, tenant: str, session_id: str) -> SessionInfo: ...

    async def list_sessions(self, tenant: str) -> list[SessionInfo]: ...

    async def delete_session(self, tenant: str, session_id: str) -> None: ...

    async def execute(self, tenant: str, request: ExecuteRequest) -> ExecutionResult:
        """Run code in the session; cancelling the call interrupts the code and frees the session."""
        ...

    async def upload_file(
        self, tenant: str, session_id: str, path: str, chunks: AsyncIterable[bytes]
    ) -> FileEntry: ...

    async def read_file(self, tenant: str, session_id: str, path: str) -> AsyncIterator[bytes]: ...

    async def list_files(self, tenant: str, session_id: str) -> list[FileEntry]: ...
