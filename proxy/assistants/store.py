"""Reading and writing the Assistants API's objects: rows whose `data` is the object as served.

Also the one place that ends runs no process drives any more: a run whose process stopped
(its heartbeat went silent) fails with a clear `last_error`, and a run left waiting for tool
outputs past its deadline expires. Every reader of a run settles it first, so whichever
process answers, a run is never shown stuck in progress.
"""

from typing import Any, TypeVar

from sqlmodel import col, select, update
from sqlmodel.ext.asyncio.session import AsyncSession

from proxy.assistants.objects import MESSAGE_FATE, STEP_FATE, end_message, end_run, end_step
from proxy.errors import NotFoundError
from proxy.jsonutil import dumps, loads
from storage.assistants import DRIVEN, get_object, release_thread, run_steps
from storage.models import (
    Assistant,
    AssistantsObject,
    RunStep,
    Thread,
    ThreadMessage,
    ThreadRun,
)

T = TypeVar("T", bound=AssistantsObject)

KINDS: dict[type[AssistantsObject], str] = {
    Assistant: "assistant",
    Thread: "thread",
    ThreadMessage: "message",
    ThreadRun: "run",
    RunStep: "run step",
}
MODELS: dict[str, type[AssistantsObject]] = {
    "assistant": Assistant,
    "thread": Thread,
    "thread.message": ThreadMessage,
    "thread.run": ThreadRun,
    "thread.run.step": RunStep,
}
INTERRUPTED = (
    "The run was interrupted: the server stopped or restarted while it was in progress. "
    "Create a new run to try again."
)
SHUTDOWN = (
    "The run was stopped because the server shut down while it was in progress. Create a "
    "new run to try again."
)


def dump(obj: dict[str, Any]) -> str:
    return dumps(obj).decode()


def public(row: AssistantsObject) -> dict[str, Any]:
    data: dict[str, Any] = loads(row.data)
    return data


async def require(db: AsyncSession, model: type[T], *, tenant: str, id: str, **parents: str) -> T:
    """The tenant's object, or OpenAI's 404 (another tenant's object is not found either)."""
    row = await get_object(db, model, tenant=tenant, id=id, **parents)
    if row is None:
        kind = KINDS[model]
        raise NotFoundError(
            f"No {kind} found with id '{id}'.", param=f"{kind.replace(' ', '_')}_id"
        )
    return row


def new_row(obj: dict[str, Any], *, tenant: str, **columns: Any) -> AssistantsObject:
    """A row for a new object (its table from the object's type)."""
    model = MODELS[obj["object"]]
    return model(
        id=obj["id"], tenant=tenant, created_at=obj["created_at"], data=dump(obj), **columns
    )


def changes(obj: dict[str, Any], **columns: Any) -> tuple[type[AssistantsObject], dict[str, Any]]:
    """The table of an object and the values to write to its row (`columns` too)."""
    model = MODELS[obj["object"]]
    values = {"data": dump(obj), **columns}
    if model is ThreadRun:
        values["status"] = obj["status"]
    return model, values


async def write(
    db: AsyncSession, model: type[AssistantsObject], id: str, values: dict[str, Any]
) -> None:
    """Write values to an object's row; the caller commits."""
    await db.exec(
        update(model)
        .where(col(model.id) == id)
        .values(**values)
        .execution_options(synchronize_session=False)
    )


async def save(db: AsyncSession, obj: dict[str, Any], **columns: Any) -> None:
    """Write an existing object (and other columns of its row); the caller commits."""
    model, values = changes(obj, **columns)
    await write(db, model, obj["id"], values)


async def settle(
    db: AsyncSession, row: ThreadRun, *, now: float, silent_since: float, local: bool
) -> ThreadRun:
    """End `row` if nothing will: failed if its process went silent (unless this process
    drives it), expired if it waited for tool outputs too long. Commits what it changes."""
    run = public(row)
    if row.status in DRIVEN and row.heartbeat_at < silent_since and not local:
        status, error = "failed", {"code": "server_error", "message": INTERRUPTED}
    elif row.status == "requires_action" and (run.get("expires_at") or now) < now:
        status, error = "expired", None
    else:
        return row
    changed = await end_run_row(db, row, status, int(now), error=error)
    return changed or row


async def end_run_row(
    db: AsyncSession,
    row: ThreadRun,
    status: str,
    at: int,
    *,
    error: dict[str, str] | None = None,
) -> ThreadRun | None:
    """End a run no driver holds, with its open steps and messages; None if its row changed
    meanwhile (someone else ended or resumed it). Commits."""
    run = public(row)
    end_run(run, status, at, error=error)
    result = await db.exec(
        update(ThreadRun)
        .where(
            col(ThreadRun.id) == row.id,
            col(ThreadRun.status) == row.status,
            col(ThreadRun.heartbeat_at) == row.heartbeat_at,
        )
        .values(status=status, data=dump(run))
    )
    if not result.rowcount:
        # Nothing was written: see the row as whoever changed it left it.
        await db.commit()
        await db.refresh(row)
        return None
    for step_row in await run_steps(db, run_id=row.id):
        step = public(step_row)
        if step["status"] == "in_progress":
            end_step(step, STEP_FATE[status], at, error if status == "failed" else None)
            await save(db, step)
    query = select(ThreadMessage).where(
        col(ThreadMessage.thread_id) == row.thread_id, col(ThreadMessage.run_id) == row.id
    )
    for message_row in (await db.exec(query)).all():
        message = public(message_row)
        if message["status"] == "in_progress":
            end_message(message, at, MESSAGE_FATE[status])
            await save(db, message)
    await release_thread(db, thread_id=row.thread_id, run_id=row.id)
    await db.commit()
    row.status, row.data = status, dump(run)
    return row
