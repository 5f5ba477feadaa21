"""Queries on the tables of the Assistants API. Every query of a client's request is scoped to
one tenant; the few that are not (heartbeats, the sweep of abandoned runs) say so."""

from collections.abc import Sequence
from typing import Any, Literal, TypeVar

from sqlalchemy import ColumnElement
from sqlmodel import col, delete, select, update
from sqlmodel.ext.asyncio.session import AsyncSession

from storage.models import AssistantsObject, RunStep, Thread, ThreadMessage, ThreadRun

T = TypeVar("T", bound=AssistantsObject)

# Statuses of a run that still holds its thread.
ACTIVE = ("queued", "in_progress", "requires_action", "cancelling")
# Statuses of a run that a process is working on (and keeps a heartbeat for).
DRIVEN = ("queued", "in_progress", "cancelling")


async def get_object(
    db: AsyncSession, model: type[T], *, tenant: str, id: str, **parents: str
) -> T | None:
    """The tenant's object `id`, or None; `parents` (e.g. `thread_id`) must match too."""
    query = select(model).where(col(model.id) == id, col(model.tenant) == tenant)
    for name, value in parents.items():
        query = query.where(getattr(model, name) == value)
    return (await db.exec(query)).first()


async def list_objects(
    db: AsyncSession,
    model: type[T],
    *,
    tenant: str,
    where: Sequence[ColumnElement[bool]] = (),
    limit: int,
    order: Literal["asc", "desc"],
    after: str | None = None,
    before: str | None = None,
) -> tuple[list[T], bool]:
    """One page in creation order, and whether more follow in the direction of the page.

    `after` starts the page just past that object; `before` ends it just short of that
    object (the page nearest to it). A cursor that names no object of the list is ignored.
    """
    query = select(model).where(col(model.tenant) == tenant, *where)
    ascending = order == "asc"
    for cursor, past in ((after, ascending), (before, not ascending)):
        if cursor is None:
            continue
        found = select(model.seq).where(
            col(model.tenant) == tenant, col(model.id) == cursor, *where
        )
        seq = (await db.exec(found)).first()
        if seq is not None:
            query = query.where(col(model.seq) > seq if past else col(model.seq) < seq)
    # A `before` page is read backwards from its cursor, then put in the asked order.
    backwards = before is not None and after is None
    forward = ascending != backwards
    query = query.order_by(col(model.seq).asc() if forward else col(model.seq).desc())
    rows = list((await db.exec(query.limit(limit + 1))).all())
    page = rows[:limit]
    if backwards:
        page.reverse()
    return page, len(rows) > limit


async def claim_thread(db: AsyncSession, *, tenant: str, thread_id: str, run_id: str) -> bool:
    """Make `run_id` the thread's active run if it has none; False if another one is."""
    result = await db.exec(
        update(Thread)
        .where(
            col(Thread.id) == thread_id,
            col(Thread.tenant) == tenant,
            col(Thread.active_run_id).is_(None),
        )
        .values(active_run_id=run_id)
    )
    return bool(result.rowcount)


async def release_thread(db: AsyncSession, *, thread_id: str, run_id: str, **sandbox: Any) -> None:
    """The run no longer holds its thread (a no-op if it did not); `sandbox` columns given
    are set by the same statement."""
    await db.exec(
        update(Thread)
        .where(col(Thread.id) == thread_id, col(Thread.active_run_id) == run_id)
        .values(active_run_id=None, **sandbox)
        .execution_options(synchronize_session=False)
    )


async def completed_runs(db: AsyncSession, *, run_ids: Sequence[str]) -> list[ThreadRun]:
    """Those of `run_ids` that completed."""
    if not run_ids:
        return []
    query = select(ThreadRun).where(
        col(ThreadRun.id).in_(run_ids), col(ThreadRun.status) == "completed"
    )
    return list((await db.exec(query)).all())


async def thread_messages(db: AsyncSession, *, thread_id: str) -> list[ThreadMessage]:
    """Every message of the thread, oldest first."""
    query = (
        select(ThreadMessage)
        .where(col(ThreadMessage.thread_id) == thread_id)
        .order_by(col(ThreadMessage.seq))
    )
    return list((await db.exec(query)).all())


async def run_steps(db: AsyncSession, *, run_id: str) -> list[RunStep]:
    query = select(RunStep).where(col(RunStep.run_id) == run_id).order_by(col(RunStep.seq))
    return list((await db.exec(query)).all())


async def update_thread_sandbox(db: AsyncSession, *, thread_id: str, **values: Any) -> None:
    """Set the thread's sandbox columns (`session_id`, `placed`, `outputs`) alone, so that a
    concurrent change of the thread's metadata is not lost."""
    await db.exec(
        update(Thread)
        .where(col(Thread.id) == thread_id)
        .values(**values)
        .execution_options(synchronize_session=False)
    )


async def delete_thread_objects(db: AsyncSession, *, thread_id: str) -> None:
    """Delete the thread's messages, runs and steps (the caller deletes the thread)."""
    runs = select(ThreadRun.id).where(col(ThreadRun.thread_id) == thread_id)
    await db.exec(delete(RunStep).where(col(RunStep.run_id).in_(runs)))
    await db.exec(delete(ThreadRun).where(col(ThreadRun.thread_id) == thread_id))
    await db.exec(delete(ThreadMessage).where(col(ThreadMessage.thread_id) == thread_id))


async def beat(db: AsyncSession, *, run_ids: Sequence[str], now: float) -> list[str]:
    """Record that this process still drives `run_ids` (whatever their tenants); returns those
    of them another process asked to cancel."""
    if not run_ids:
        return []
    await db.exec(update(ThreadRun).where(col(ThreadRun.id).in_(run_ids)).values(heartbeat_at=now))
    await db.commit()
    query = select(ThreadRun.id).where(
        col(ThreadRun.id).in_(run_ids), col(ThreadRun.status) == "cancelling"
    )
    return list((await db.exec(query)).all())


async def abandoned_runs(db: AsyncSession, *, silent_since: float) -> list[ThreadRun]:
    """Runs of every tenant that some process should be driving but whose heartbeat stopped
    before `silent_since`, and runs waiting for tool outputs (their deadline is in `data`)."""
    query = select(ThreadRun).where(
        (col(ThreadRun.status).in_(DRIVEN) & (col(ThreadRun.heartbeat_at) < silent_since))
        | (col(ThreadRun.status) == "requires_action")
    )
    return list((await db.exec(query)).all())
