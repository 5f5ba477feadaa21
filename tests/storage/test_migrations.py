"""Schema migrations on real SQLite and PostgreSQL databases: they match the models, replicas
starting together on a fresh database take turns, and a schema this code does not know stops
the service with a clear message."""

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlmodel import SQLModel

from storage.db import create_engine
from storage.migrate import (
    FIRST_TABLES,
    SchemaError,
    current_revision,
    differences,
    head,
    prepare,
    upgrade,
)
from tests.conftest import DATABASES

on_both = pytest.mark.parametrize("database_url", DATABASES, indirect=True)
REPO = Path(__file__).resolve().parents[2]


@on_both
async def test_migrations_create_exactly_the_models_tables(database_url: str) -> None:
    """A table or column added to the models without a migration fails here: add one with
    `codeproxy db revision "what changed"`."""
    engine = create_engine(database_url)
    try:
        await upgrade(engine)
        assert await differences(engine) == []
        assert await current_revision(engine) == head()
    finally:
        await engine.dispose()


@on_both
async def test_replicas_starting_together_on_a_fresh_database(database_url: str) -> None:
    # Separate engines are separate connections: the database sees them race.
    engines = [create_engine(database_url) for _ in range(4)]
    try:
        await asyncio.gather(*(prepare(e, migrate=True) for e in engines))
        assert await current_revision(engines[0]) == head()
        assert await differences(engines[0]) == []
    finally:
        await asyncio.gather(*(e.dispose() for e in engines))


@on_both
async def test_a_schema_from_a_newer_version_is_refused(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        await upgrade(engine)
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
        for migrate in (True, False):
            with pytest.raises(SchemaError, match="revision '9999', which this version of"):
                await prepare(engine, migrate=migrate)
        async with engine.connect() as conn:  # nothing was touched
            version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()
        assert version == "9999"
    finally:
        await engine.dispose()


@on_both
async def test_without_auto_migrate_an_old_schema_is_refused(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        with pytest.raises(SchemaError, match="no codeproxy schema yet: run `codeproxy db"):
            await prepare(engine, migrate=False)
        await upgrade(engine)
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE alembic_version SET version_num = '0001'"))
        with pytest.raises(SchemaError, match=r"older than this version.*codeproxy db upgrade"):
            await prepare(engine, migrate=False)
    finally:
        await engine.dispose()


@on_both
async def test_a_database_from_before_migrations_is_adopted(database_url: str) -> None:
    """Databases created by `create_all` before migrations existed keep their rows."""
    engine = create_engine(database_url)
    old = [SQLModel.metadata.tables[name] for name in sorted(FIRST_TABLES)]
    try:
        async with engine.begin() as conn:
            await conn.run_sync(lambda sync: SQLModel.metadata.create_all(sync, tables=old))
            await conn.execute(
                text(
                    "INSERT INTO api_keys (id, tenant, key_hash, prefix, created_at) "
                    "VALUES ('key_1', 'old', 'h', 'cpk-', 1)"
                )
            )
        await prepare(engine, migrate=True)
        assert await differences(engine) == []
        async with engine.connect() as conn:
            tenant = (await conn.execute(text("SELECT tenant FROM api_keys"))).scalar()
        assert tenant == "old"
    finally:
        await engine.dispose()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_cli_db_upgrade_and_a_refused_start(database_url: str, tmp_path: Path) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CODEPROXY_")},
        "CODEPROXY_DATABASE_URL": database_url,
        "CODEPROXY_DATA_DIR": str(tmp_path / "data"),
        "CODEPROXY_AUTO_MIGRATE": "false",
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "codeproxy.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO,
        )

    refused = cli("serve", "--port", "1")
    assert refused.returncode != 0
    assert "no codeproxy schema yet: run `codeproxy db upgrade`" in refused.stderr
    done = cli("db", "upgrade")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{head()} ")
    assert cli("db", "upgrade").returncode == 0  # a second run changes nothing
    assert cli("db", "current").stdout.startswith(f"{head()} ")
