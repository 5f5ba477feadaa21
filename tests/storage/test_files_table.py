"""File rows on real SQLite and PostgreSQL databases: tenant scoping, expiry, pagination."""

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from storage.db import create_engine, session_factory
from storage.files import expired_files, get_file, list_files
from storage.migrate import upgrade
from storage.models import File
from tests.conftest import DATABASES

on_both = pytest.mark.parametrize("database_url", DATABASES, indirect=True)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(database_url)
    await upgrade(engine)
    yield session_factory(engine)
    await engine.dispose()


def row(
    file_id: str, tenant: str = "a", *, purpose: str = "assistants", expires_at: int | None = None
) -> File:
    now = int(time.time())
    return File(
        id=file_id,
        tenant=tenant,
        filename=f"{file_id}.txt",
        purpose=purpose,
        bytes=1,
        created_at=now,
        expires_at=expires_at,
        sha256="0" * 64,
        blob_key=file_id,
    )


async def test_sqlite_uses_wal(db: async_sessionmaker[AsyncSession], tmp_path: Path) -> None:
    async with db() as s:
        s.add(row("file-1"))
        await s.commit()
    assert (tmp_path / "db" / "codeproxy.db-wal").exists()


@on_both
async def test_create_read_delete(db: async_sessionmaker[AsyncSession]) -> None:
    async with db() as s:
        s.add(row("file-1"))
        await s.commit()
        got = await get_file(s, tenant="a", file_id="file-1")
        assert got is not None and got.filename == "file-1.txt"
        assert await get_file(s, tenant="b", file_id="file-1") is None
        await s.delete(got)
        await s.commit()
        assert await get_file(s, tenant="a", file_id="file-1") is None


@on_both
async def test_pagination_order_within_one_second(db: async_sessionmaker[AsyncSession]) -> None:
    ids = [f"file-{i:02d}" for i in range(7)]
    async with db() as s:
        for file_id in ids:
            s.add(row(file_id))
            await s.commit()
        s.add(row("file-other", tenant="b"))
        await s.commit()

        seen: list[str] = []
        after = None
        while True:
            page, more = await list_files(s, tenant="a", after=after, limit=3, order="desc")
            seen += [f.id for f in page]
            if not more:
                break
            after = page[-1].id
        assert seen == ids[::-1]
        page, more = await list_files(s, tenant="a", after="file-02", limit=10, order="asc")
        assert [f.id for f in page] == ids[3:] and more is False


@on_both
async def test_expired_rows_are_invisible(db: async_sessionmaker[AsyncSession]) -> None:
    now = int(time.time())
    async with db() as s:
        s.add(row("file-old", expires_at=now - 1))
        s.add(row("file-new", expires_at=now + 3600))
        await s.commit()
        assert await get_file(s, tenant="a", file_id="file-old") is None
        page, _ = await list_files(s, tenant="a")
        assert [f.id for f in page] == ["file-new"]
        assert [f.id for f in await expired_files(s, now=now)] == ["file-old"]
