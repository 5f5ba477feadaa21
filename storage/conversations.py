"""Queries on the conversations table."""

from sqlmodel import col, delete, select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage.models import Conversation


async def find_conversation(
    db: AsyncSession, *, tenant: str, hashes: list[str], now: int
) -> Conversation | None:
    """The live record matching the first hash in `hashes` that has one."""
    if not hashes:
        return None
    query = select(Conversation).where(
        col(Conversation.tenant) == tenant,
        col(Conversation.prefix_hash).in_(hashes),
        col(Conversation.expires_at) > now,
    )
    rows = {row.prefix_hash: row for row in (await db.exec(query)).all()}
    return next((rows[h] for h in hashes if h in rows), None)


async def purge_conversations(db: AsyncSession, *, now: int) -> None:
    await db.exec(delete(Conversation).where(col(Conversation.expires_at) <= now))
    await db.commit()


async def replace_conversation(db: AsyncSession, record: Conversation) -> None:
    """Store `record` as the only one of its tenant under its key, with whatever else the
    session holds, in one commit."""
    await db.exec(
        delete(Conversation).where(
            col(Conversation.tenant) == record.tenant,
            col(Conversation.prefix_hash) == record.prefix_hash,
        )
    )
    db.add(record)
    await db.commit()
