"""Wire models of the execution service, shared by its HTTP API, its client and the proxy."""

from typing import Literal

from pydantic import BaseModel, Field


class RichOutput(BaseModel):
    """One rich output of an execution: a mime bundle from `display_data` or `execute_result`.

    Binary formats (`image/png`, `image/jpeg`) are base64 strings, as Jupyter sends them.
    """

    kind: Literal["display_data", "execute_result"]
    data: dict[str, str]


class ExecutionError(BaseModel):
    """The exception user code raised (or a compiler/runtime failure of a one-shot run)."""

    name: str
    value: str
    traceback: list[str] = Field(default_factory=list)


class FileEntry(BaseModel):
    """A regular file under /mnt/data; `path` is absolute inside the sandbox."""

    path: str
    size: int
    modified: float


class RunOutcome(BaseModel):
    """What a sandbox reports for one run of code."""

    stdout: str = ""
    stderr: str = ""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    results: list[RichOutput] = Field(default_factory=list)
    error: ExecutionError | None = None
    exit_code: int | None = None
    duration_ms: int = 0
    timed_out: bool = False
    # True when the sandbox had to be killed and restarted: variables and /tmp are gone.
    state_lost: bool = False


class ExecutionResult(RunOutcome):
    """Everything one execution produced, as the service returns it."""

    session_id: str
    language: str
    # Regular files under /mnt/data created or changed by this execution.
    files: list[FileEntry] = Field(default_factory=list)


class ExecuteRequest(BaseModel):
    """Run `code` in a session's sandbox."""

    session_id: str
    code: str
    language: str = "python"
    timeout: float | None = Field(default=None, gt=0)


class CreateSessionRequest(BaseModel):
    language: str | None = None


class SessionInfo(BaseModel):
    """A tenant's sandbox session."""

    id: str
    tenant: str
    status: Literal["active", "busy", "expired", "deleted"]
    created_at: float
    last_active_at: float
    expires_at: float
    executions: int = 0
    # The node holding the session and that node's boot (set when the session is created).
    node_id: str | None = None
    boot_id: str | None = None


class PoolHealth(BaseModel):
    status: Literal["ok", "degraded"]
    backend: str
    warm: int
    sandboxes: int
    max_sandboxes: int
    busy: int
    # Who answers: a stable node id, and a boot id new at every start of the service (a new
    # one means every session the node held before is gone). None for a sum over nodes.
    node_id: str | None = None
    boot_id: str | None = None
    sessions: int = 0
