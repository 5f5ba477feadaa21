"""Schema migrations (Alembic, in `storage/migrations/`) for SQLite and PostgreSQL.

`prepare` is what a service runs at start: migrate to the newest revision under a lock, so
that replicas and workers starting together on a fresh database take turns (PostgreSQL: an
advisory lock; SQLite: a lock file beside the database), then check the schema is one this
code knows. `codeproxy db upgrade` runs the same migration as a separate step.
"""

import asyncio
import contextlib
import fcntl
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlmodel import SQLModel

import storage.models  # noqa: F401  (registers the tables on SQLModel.metadata)
from storage.db import create_engine

MIGRATIONS = Path(__file__).parent / "migrations"
# Any constant shared by every codeproxy process: "codeprox" in ASCII.
ADVISORY_LOCK_KEY = 0x636F646570726F78
# The first revision describes the tables that existed before migrations did: a database
# that has exactly those, created by an older codeproxy, is adopted at that revision.
FIRST_REVISION = "0001"
FIRST_TABLES = frozenset({"api_keys", "files", "executions", "conversations"})


class SchemaError(RuntimeError):
    """The database's schema is not the one this code needs; the message says what to do."""


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head() -> str:
    """The newest revision this code knows."""
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    if len(heads) != 1:
        raise SchemaError(f"The migrations have {len(heads)} heads; merge them into one.")
    return heads[0]


async def upgrade(engine: AsyncEngine) -> None:
    """Migrate to the newest revision; concurrent callers wait for each other."""
    async with _locked(engine) as conn:
        await conn.run_sync(_upgrade)
        await conn.commit()


async def check(engine: AsyncEngine) -> None:
    """Raise SchemaError unless the database is at the newest revision this code knows."""
    async with engine.connect() as conn:
        current = await conn.run_sync(_current)
    newest = head()
    if current == newest:
        return
    known = {rev.revision for rev in ScriptDirectory.from_config(alembic_config()).walk_revisions()}
    if current is None:
        raise SchemaError(
            "The database has no codeproxy schema yet: run `codeproxy db upgrade` (or start "
            "with CODEPROXY_AUTO_MIGRATE=true)."
        )
    if current not in known:
        raise _unknown(current, newest)
    raise SchemaError(
        f"The database schema is at revision {current!r}, older than this version of "
        f"codeproxy needs ({newest!r}): run `codeproxy db upgrade`."
    )


async def prepare(engine: AsyncEngine, *, migrate: bool) -> None:
    """What a service does at start: migrate if allowed, then refuse a schema it does not know."""
    if migrate:
        await upgrade(engine)
    await check(engine)


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(_current)


async def differences(engine: AsyncEngine) -> list[object]:
    """What autogenerate would change to make the database match the models (empty: none)."""
    async with engine.connect() as conn:
        return await conn.run_sync(
            lambda sync: list(compare_metadata(_context(sync), SQLModel.metadata))
        )


def new_revision(message: str) -> Path:
    """Write a migration for what the models have that the newest revision lacks.

    The comparison runs against a scratch SQLite database migrated to the newest revision;
    review the generated file (and test it on PostgreSQL: `make test` does).
    """
    with tempfile.TemporaryDirectory() as scratch:
        url = f"sqlite+aiosqlite:///{scratch}/scratch.db"

        async def generate() -> Path:
            engine = create_engine(url)
            try:
                await upgrade(engine)
                async with engine.connect() as conn:
                    return await conn.run_sync(lambda sync: _revision(sync, message))
            finally:
                await engine.dispose()

        return asyncio.run(generate())


def _unknown(current: str, newest: str) -> SchemaError:
    return SchemaError(
        f"The database schema is at revision {current!r}, which this version of codeproxy "
        f"does not know (it knows up to {newest!r}): a newer codeproxy migrated it. Run that "
        "newer version, or point CODEPROXY_DATABASE_URL at another database."
    )


@contextlib.asynccontextmanager
async def _locked(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection holding the migration lock, in a transaction the caller commits."""
    if engine.dialect.name == "postgresql":
        async with engine.connect() as conn:
            # Held until the transaction ends: the migration commits in the same transaction.
            lock = text("SELECT pg_advisory_xact_lock(:key)")
            await conn.execute(lock, {"key": _signed(ADVISORY_LOCK_KEY)})
            yield conn
        return
    database = make_url(str(engine.url)).database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        async with engine.connect() as conn:
            yield conn
        return
    fd = os.open(f"{database}.migrate-lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
        async with engine.connect() as conn:
            yield conn
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _signed(key: int) -> int:
    return key - (1 << 64) if key >= 1 << 63 else key


def _context(connection: Connection) -> MigrationContext:
    return MigrationContext.configure(
        connection, opts={"compare_type": True, "render_as_batch": True}
    )


def _current(connection: Connection) -> str | None:
    return _context(connection).get_current_revision()


def _upgrade(connection: Connection) -> None:
    config = alembic_config(connection)
    current = _current(connection)
    script = ScriptDirectory.from_config(config)
    if current is not None and current not in {r.revision for r in script.walk_revisions()}:
        # Never touch a schema a newer codeproxy wrote.
        raise _unknown(current, head())
    if current is None and set(inspect(connection).get_table_names()) >= FIRST_TABLES:
        command.stamp(config, FIRST_REVISION)
    command.upgrade(config, "head")


def _revision(connection: Connection, message: str) -> Path:
    config = alembic_config(connection)
    number = len(list(ScriptDirectory.from_config(config).walk_revisions())) + 1
    script = command.revision(config, message=message, autogenerate=True, rev_id=f"{number:04d}")
    assert script is not None and not isinstance(script, list)
    return Path(script.path)
