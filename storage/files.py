"""Queries on the files table. Every query is scoped to one tenant."""

import time
from typing import Literal

from sqlalchemy import ColumnElement, func
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage.models import File


def _live(tenant: str, now: int) -> list[ColumnElement[bool]]:
    return [
        col(File.tenant) == tenant,
        (col(File.expires_at).is_(None)) | (col(File.expires_at) > now),
    ]


async def get_file(db: AsyncSession, *, tenant: str, file_id: str) -> File | None:
    """The tenant's unexpired file, or None (another tenant's file is None too)."""
    now = int(time.time())
    result = await db.exec(select(File).where(File.id == file_id, *_live(tenant, now)))
    return result.first()


async def used_bytes(db: AsyncSession, *, tenant: str) -> int:
    """Bytes of the tenant's unexpired files (what its storage quota counts)."""
    now = int(time.time())
    query = select(func.coalesce(func.sum(File.bytes), 0)).where(*_live(tenant, now))
    return int((await db.exec(query)).one())


async def get_any_file(db: AsyncSession, *, file_id: str) -> File | None:
    """An unexpired file by id whatever its tenant; only for signed links, which prove theirs."""
    now = int(time.time())
    query = select(File).where(
        File.id == file_id, (col(File.expires_at).is_(None)) | (col(File.expires_at) > now)
    )
    return (await db.exec(query)).first()


async def list_files(
    db: AsyncSession,
    *,
    tenant: str,
    purpose: str | None = None,
    after: str | None = None,
    limit: int = 10_000,
    order: Literal["asc", "desc"] = "desc",
) -> tuple[list[File], bool]:
    """One page of the tenant's files in creation order, and whether more follow."""
    now = int(time.time())
    query = select(File).where(*_live(tenant, now))
    if purpose is not None:
        query = query.where(File.purpose == purpose)
    if after is not None:
        cursor = await get_file(db, tenant=tenant, file_id=after)
        if cursor is not None:
            query = query.where(
                col(File.seq) > cursor.seq if order == "asc" else col(File.seq) < cursor.seq
            )
    query = query.order_by(col(File.seq).asc() if order == "asc" else col(File.seq).desc())
    rows = list((await db.exec(query.limit(limit + 1))).all())
    return rows[:limit], len(rows) > limit


async def expired_files(db: AsyncSession, *, now: int, limit: int = 500) -> list[File]:
    query = select(File).where(col(File.expires_at) <= now).limit(limit)
    return list((await db.exec(query)).all())
