"""Tables. Each concept is a `XBase` of shared fields, a `X(table=True)` row and, where it
leaves the service, a `XPublic` shape in OpenAI's format."""

from typing import Literal

from sqlmodel import Field, SQLModel


class ApiKey(SQLModel, table=True):
    """A stored API key. Only its SHA-256 is kept; the key itself is shown once at creation."""

    __tablename__ = "api_keys"

    id: str = Field(primary_key=True)
    tenant: str = Field(index=True)
    key_hash: str = Field(unique=True, index=True)
    prefix: str
    created_at: int
    revoked_at: int | None = None


class FileBase(SQLModel):
    filename: str
    purpose: str
    bytes: int
    created_at: int
    expires_at: int | None = None


class File(FileBase, table=True):
    """An uploaded or generated file; its bytes live in the blob store under `blob_key`."""

    __tablename__ = "files"

    # A monotonic sequence gives list pagination a total order even within one second.
    seq: int | None = Field(default=None, primary_key=True)
    id: str = Field(unique=True, index=True)
    tenant: str = Field(index=True)
    sha256: str
    blob_key: str
    content_type: str = "application/octet-stream"

    def public(self) -> "FilePublic":
        return FilePublic(
            id=self.id,
            filename=self.filename,
            purpose=self.purpose,
            bytes=self.bytes,
            created_at=self.created_at,
            expires_at=self.expires_at,
        )


class FilePublic(FileBase):
    """OpenAI's FileObject."""

    id: str
    object: Literal["file"] = "file"
    status: Literal["uploaded", "processed", "error"] = "processed"
    status_details: str | None = None


class Execution(SQLModel, table=True):
    """An audit record of one code execution. `code` and `output` are dropped after the
    retention period; the rest is kept."""

    __tablename__ = "executions"

    id: str = Field(primary_key=True)
    tenant: str = Field(index=True)
    session_id: str
    source: str
    language: str
    status: str
    duration_ms: int
    created_at: int = Field(index=True)
    code: str | None = None
    output: str | None = None
    file_ids: str = "[]"


class Conversation(SQLModel, table=True):
    """What a chat app cannot send back: the hidden steps of one conversation up to a reply.

    Keyed by a hash of the visible messages up to and including that reply, so the next turn
    of an unchanged app (which sends only visible messages) finds it.
    """

    __tablename__ = "conversations"

    id: str = Field(primary_key=True)
    tenant: str = Field(index=True)
    prefix_hash: str = Field(index=True)
    session_id: str | None = None
    # JSON: [{"index": visible position of the reply, "content": the model's own text,
    #          "hidden": [assistant tool-call and tool messages before it]}]
    turns: str = "[]"
    # JSON: {"/mnt/data/<path>": "file-…"} of files the conversation's code produced.
    files: str = "{}"
    created_at: int
    expires_at: int = Field(index=True)


class ExecNode(SQLModel, table=True):
    """An execution node as the API processes last saw it: who it is, where, how loaded.

    A node reports its id, boot id and load on its internal API; API processes poll it and
    write what they see here, so every process shares one view. A new `boot_id` means the node
    restarted and every session it held before is gone.
    """

    __tablename__ = "exec_nodes"

    id: str = Field(primary_key=True)
    url: str
    boot_id: str
    backend: str
    capacity: int
    sandboxes: int
    sessions: int
    busy: int
    warm: int
    # "alive", or "dead" once it missed heartbeats for longer than the dead-after setting.
    state: str = "alive"
    last_seen_at: float


class SandboxSession(SQLModel, table=True):
    """Which node holds a sandbox session, and under which boot of that node.

    Any API process finds a session's node with one lookup; a session whose node is dead or
    has restarted (another boot id) is lost.
    """

    __tablename__ = "sandbox_sessions"

    id: str = Field(primary_key=True)
    tenant: str = Field(index=True)
    node_id: str = Field(index=True)
    boot_id: str
    created_at: float
    # When the node would expire it if left idle; each use pushes it back by `idle_seconds`.
    expires_at: float = Field(index=True)
    idle_seconds: float


class Container(SQLModel, table=True):
    """A container: an executor session as the Containers API shows it, with what must
    outlive the session (its name, its options) so any API process can show and resume it."""

    __tablename__ = "containers"

    seq: int | None = Field(default=None, primary_key=True)
    id: str = Field(unique=True, index=True)  # the executor session's id, `cntr_…`
    tenant: str = Field(index=True)
    name: str = ""
    created_at: int
    last_active_at: int
    # Minutes idle before it expires, as the executor reported them at creation.
    expires_after_minutes: int
    # As asked (`1g`, `4g`, …); None: the executor's default cap.
    memory_limit: str | None = None


class ContainerFile(SQLModel, table=True):
    """A file in a container's /mnt/data; its bytes are a tenant file (`file_id`), so they
    can be downloaded, and put back in a new container, after the container has expired."""

    __tablename__ = "container_files"

    seq: int | None = Field(default=None, primary_key=True)
    id: str = Field(unique=True, index=True)  # `cfile_…`
    container_id: str = Field(index=True)
    tenant: str = Field(index=True)
    path: str
    bytes: int
    source: str  # `user` (uploaded or given) or `assistant` (written or shown by the code)
    file_id: str
    created_at: int


class StoredResponse(SQLModel, table=True):
    """A response of the Responses API (`store`), owned by a tenant."""

    __tablename__ = "responses"

    id: str = Field(primary_key=True)  # `resp_…`
    tenant: str = Field(index=True)
    created_at: int
    # JSON: the `response` object with every output (outputs are left out on reading when
    # `include` does not ask for them).
    body: str
    # JSON: this request's input items, with their ids.
    input_items: str
    # JSON: the conversation as the upstream saw it, through this response's answer (chat
    # messages, the hidden code steps included, `instructions` not), for `previous_response_id`.
    conversation: str
    container_id: str | None = None


class AssistantsObject(SQLModel):
    """What every stored object of the Assistants API has: its id, its tenant, its creation
    time and the object itself as the API serves it (JSON), so a read is one row."""

    # A monotonic sequence orders lists, even within one second.
    seq: int | None = Field(default=None, primary_key=True)
    id: str = Field(unique=True, index=True)
    tenant: str = Field(index=True)
    created_at: int
    data: str


class Assistant(AssistantsObject, table=True):
    """An assistant (`asst_…`)."""

    __tablename__ = "assistants"


class Thread(AssistantsObject, table=True):
    """A thread (`thread_…`) and the sandbox its runs share."""

    __tablename__ = "threads"

    # The run that is queued, in progress, waiting for tool outputs or being cancelled; at
    # most one, set and cleared with conditional updates.
    active_run_id: str | None = None
    # The executor session of the thread's code, while it lives.
    session_id: str | None = None
    # JSON {file_id: "/mnt/data/<name>"}: input files already copied into that session.
    placed: str = "{}"
    # JSON {"/mnt/data/<path>": file_id}: files the thread's code wrote, to put back in a new
    # session and to link from messages.
    outputs: str = "{}"


class ThreadMessage(AssistantsObject, table=True):
    """A message of a thread (`msg_…`)."""

    __tablename__ = "thread_messages"

    thread_id: str = Field(index=True)
    run_id: str | None = None


class ThreadRun(AssistantsObject, table=True):
    """A run (`run_…`). `status` mirrors the object's for queries."""

    __tablename__ = "thread_runs"

    thread_id: str = Field(index=True)
    status: str = Field(index=True)
    # Written every few seconds by the process that drives the run: a run whose heartbeat
    # stopped lost its process (a restart) and is ended as failed.
    heartbeat_at: float
    # JSON: the messages the run added to the upstream conversation (code calls and results,
    # function calls and outputs, its answer), in chat-completions form.
    transcript: str = "[]"


class RunStep(AssistantsObject, table=True):
    """A step of a run (`step_…`)."""

    __tablename__ = "run_steps"

    run_id: str = Field(index=True)
