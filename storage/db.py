"""Async engine and sessions: SQLite (aiosqlite, WAL) by default, PostgreSQL (asyncpg) at scale."""

from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

import storage.models  # noqa: F401  (registers the tables on SQLModel.metadata)

POOL_RECYCLE_SECONDS = 1800


def create_engine(url: str, *, pool_size: int = 5, max_overflow: int = 5) -> AsyncEngine:
    """An async engine for `url`; SQLite gets WAL mode, a busy timeout and its folder created.

    Elsewhere (PostgreSQL) each process keeps at most `pool_size + max_overflow` connections,
    checked before use and replaced every half hour, below the idle timeouts of poolers and
    firewalls.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_async_engine(
            url,
            pool_pre_ping=True,
            pool_recycle=POOL_RECYCLE_SECONDS,
            pool_size=pool_size,
            max_overflow=max_overflow,
        )
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine.sync_engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    return engine


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)
