"""The execution service's public surface: what a caller (the proxy) may rely on.

`Executor` is the interface; `executor.service.ExecutorService` implements it in-process (the
all-in-one `codeproxy serve`) and `executor.client.HttpExecutorClient` over the internal HTTP
API. Both raise the `ExecutorError`s of `executor.errors` and speak the models of
`executor.models`, re-exported here so that callers import this one module.
"""

from collections.abc import AsyncIterable, AsyncIterator
from typing import Protocol

from executor.errors import (
    CapacityExhausted,
    ExecutorError,
    FileTooLarge,
    InvalidRequest,
    NotFound,
    SandboxFileNotFound,
    SandboxUnavailable,
    SessionNotFound,
    Unauthorized,
    UnsupportedLanguage,
)
from executor.languages import Language, parse_language
from executor.models import (
    ExecuteRequest,
    ExecutionError,
    ExecutionResult,
    FileEntry,
    PoolHealth,
    RichOutput,
    SessionInfo,
    SessionOptions,
)

__all__ = [
    "DATA_DIR",
    "TENANT_HEADER",
    "TOKEN_HEADER",
    "CapacityExhausted",
    "ExecuteRequest",
    "ExecutionError",
    "ExecutionResult",
    "Executor",
    "ExecutorError",
    "FileEntry",
    "FileTooLarge",
    "InvalidRequest",
    "Language",
    "NotFound",
    "PoolHealth",
    "RichOutput",
    "SandboxFileNotFound",
    "SandboxUnavailable",
    "SessionInfo",
    "SessionNotFound",
    "SessionOptions",
    "Unauthorized",
    "UnsupportedLanguage",
    "parse_language",
    "relative_data_path",
]

DATA_DIR = "/mnt/data"
# The internal API's headers: the shared secret, and the tenant the proxy acts for.
TOKEN_HEADER = "Internal-Auth-Token"
TENANT_HEADER = "Codeproxy-Tenant"


class Executor(Protocol):
    """Tenant-scoped access to sandbox sessions. Another tenant's session is SessionNotFound."""

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    async def health(self) -> PoolHealth: ...

    async def create_session(
        self, tenant: str, options: SessionOptions | None = None
    ) -> SessionInfo: ...

    async def get_session(self, tenant: str, session_id: str) -> SessionInfo: ...

    async def list_sessions(self, tenant: str) -> list[SessionInfo]: ...

    async def delete_session(self, tenant: str, session_id: str) -> None: ...

    async def execute(self, tenant: str, request: ExecuteRequest) -> ExecutionResult:
        """Run code in the session; cancelling the call interrupts the code and frees the lease."""
        ...

    async def upload_file(
        self, tenant: str, session_id: str, path: str, chunks: AsyncIterable[bytes]
    ) -> FileEntry: ...

    async def read_file(self, tenant: str, session_id: str, path: str) -> AsyncIterator[bytes]: ...

    async def list_files(self, tenant: str, session_id: str) -> list[FileEntry]: ...


def relative_data_path(path: str) -> str:
    """Normalise a client path to one relative to /mnt/data, refusing any escape."""
    p = path.strip()
    if p.startswith(DATA_DIR + "/"):
        p = p[len(DATA_DIR) + 1 :]
    elif p.startswith("/"):
        raise InvalidRequest(f"Path {path!r} is outside {DATA_DIR}.", param="path")
    parts = [part for part in p.split("/") if part not in ("", ".")]
    if not parts or any(part == ".." for part in parts) or "\x00" in p:
        raise InvalidRequest(f"Invalid path {path!r}.", param="path")
    return "/".join(parts)
