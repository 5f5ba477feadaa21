"""Queries on execution nodes and on the sessions they hold.

Every statement is idempotent, so any API process may run any of them at any time: no leader
is elected, and two processes doing the same thing at once do no harm.
"""

from dataclasses import dataclass

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import col, delete, select, update
from sqlmodel.ext.asyncio.session import AsyncSession

from storage.models import ExecNode, SandboxSession

ALIVE = "alive"
DEAD = "dead"


@dataclass(frozen=True)
class Heartbeat:
    """What a node reported about itself."""

    node_id: str
    url: str
    boot_id: str
    backend: str
    capacity: int
    sandboxes: int
    sessions: int
    busy: int
    warm: int


async def record_heartbeat(db: AsyncSession, beat: Heartbeat, *, now: float) -> None:
    """Insert or refresh the node's row: alive, seen now, with what it reported."""
    values = {
        "url": beat.url,
        "boot_id": beat.boot_id,
        "backend": beat.backend,
        "capacity": beat.capacity,
        "sandboxes": beat.sandboxes,
        "sessions": beat.sessions,
        "busy": beat.busy,
        "warm": beat.warm,
        "state": ALIVE,
        "last_seen_at": now,
    }
    bind = db.get_bind()
    insert = pg_insert if bind.dialect.name == "postgresql" else sqlite_insert
    statement = insert(ExecNode).values(id=beat.node_id, **values)
    await db.exec(statement.on_conflict_do_update(index_elements=["id"], set_=values))
    await db.commit()


async def mark_dead(db: AsyncSession, *, silent_since: float) -> list[str]:
    """Mark dead every live node not heard of since `silent_since`; returns their ids."""
    stale = select(ExecNode.id).where(
        col(ExecNode.state) == ALIVE, col(ExecNode.last_seen_at) < silent_since
    )
    ids = list((await db.exec(stale)).all())
    if ids:
        await db.exec(
            update(ExecNode)
            .where(col(ExecNode.id).in_(ids), col(ExecNode.last_seen_at) < silent_since)
            .values(state=DEAD)
        )
        await db.commit()
    return ids


async def all_nodes(db: AsyncSession) -> list[ExecNode]:
    return list((await db.exec(select(ExecNode))).all())


async def live_nodes(db: AsyncSession) -> list[ExecNode]:
    return list((await db.exec(select(ExecNode).where(col(ExecNode.state) == ALIVE))).all())


async def note_placement(db: AsyncSession, *, node_id: str, boot_id: str) -> None:
    """Count a session just placed on the node until its next heartbeat says how many it has,
    so that placements between two heartbeats spread; adopt the boot id it answered with."""
    await db.exec(
        update(ExecNode)
        .where(col(ExecNode.id) == node_id)
        .values(sessions=col(ExecNode.sessions) + 1, boot_id=boot_id)
    )
    await db.commit()


async def add_session(db: AsyncSession, row: SandboxSession) -> None:
    db.add(row)
    await db.commit()


async def find_session(
    db: AsyncSession, *, session_id: str
) -> tuple[SandboxSession, ExecNode | None] | None:
    """The session's row and its node's row (None if the node is unknown), in one query."""
    query = (
        select(SandboxSession, ExecNode)
        .join(ExecNode, col(ExecNode.id) == col(SandboxSession.node_id), isouter=True)
        .where(col(SandboxSession.id) == session_id)
    )
    found = (await db.exec(query)).first()
    return None if found is None else (found[0], found[1])


async def tenant_nodes(db: AsyncSession, *, tenant: str) -> list[ExecNode]:
    """The live nodes that hold (or held) sessions of the tenant."""
    query = (
        select(ExecNode)
        .where(
            col(ExecNode.state) == ALIVE,
            col(ExecNode.id).in_(
                select(SandboxSession.node_id).where(col(SandboxSession.tenant) == tenant)
            ),
        )
        .distinct()
    )
    return list((await db.exec(query)).all())


async def touch_session(db: AsyncSession, *, session_id: str, now: float) -> None:
    await db.exec(
        update(SandboxSession)
        .where(col(SandboxSession.id) == session_id)
        .values(expires_at=now + col(SandboxSession.idle_seconds))
    )
    await db.commit()


async def forget_session(db: AsyncSession, *, session_id: str) -> None:
    await db.exec(delete(SandboxSession).where(col(SandboxSession.id) == session_id))
    await db.commit()


async def purge_sessions(db: AsyncSession, *, now: float) -> None:
    """Forget sessions their node would have expired by now. A lost session's row stays
    until then, so that its id is reported as lost rather than unknown."""
    await db.exec(delete(SandboxSession).where(col(SandboxSession.expires_at) < now))
    await db.commit()
