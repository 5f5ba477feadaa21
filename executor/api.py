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
    CodeTooLong,
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
)

__all__ = [
    "DATA_DIR",
    "TENANT_HEADER",
    "TOKEN_HEADER",
    "CapacityExhausted",
    "CodeTooLong",
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
    "Unauthorized",
    "UnsupportedLanguage",
    "check_code",
    "check_text",
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

    async def create_session(self, tenant: str) -> SessionInfo: ...

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


def check_text(value: str, param: str) -> None:
    """Refuse a string that is not valid Unicode (a lone surrogate: no encoder takes it)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidRequest(
            f"Invalid '{param}': it contains a lone surrogate ({value[e.start]!r}), which is "
            "not valid Unicode.",
            param=param,
        ) from None


def check_code(code: str, max_bytes: int) -> None:
    """Refuse code above `max_bytes` (UTF-8) or not valid Unicode, before anything runs."""
    try:
        size = len(code.encode("utf-8"))
    except UnicodeEncodeError:
        check_text(code, "code")
        raise
    if size > max_bytes:
        raise CodeTooLong(
            f"Invalid 'code': it is {size} bytes long; the limit is {max_bytes} bytes.",
            param="code",
        )


def relative_data_path(path: str) -> str:
    """Normalise a client path to one relative to /mnt/data, refusing any escape."""
    check_text(path, "path")
    p = path.strip()
    if p.startswith(DATA_DIR + "/"):
        p = p[len(DATA_DIR) + 1 :]
    elif p.startswith("/"):
        raise InvalidRequest(f"Path {path!r} is outside {DATA_DIR}.", param="path")
    parts = [part for part in p.split("/") if part not in ("", ".")]
    if not parts or any(part == ".." for part in parts) or "\x00" in p:
        raise InvalidRequest(f"Invalid path {path!r}.", param="path")
    return "/".join(parts)
