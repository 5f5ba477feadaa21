"""Queries on the executions audit table."""

from sqlmodel import col, update
from sqlmodel.ext.asyncio.session import AsyncSession

from storage.models import Execution


async def forget_old_content(db: AsyncSession, *, before: int) -> None:
    """Drop the code and output of executions older than `before` (the retention limit)."""
    await db.exec(
        update(Execution)
        .where(col(Execution.created_at) < before, col(Execution.code).is_not(None))
        .values(code=None, output=None)
    )
    await db.commit()
