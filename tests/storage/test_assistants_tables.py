"""The Assistants API's rows on real SQLite and PostgreSQL databases: cursor pages, the one
active run of a thread, and ending runs nobody drives when two parties race to do it."""

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from proxy.assistants.store import dump, public, settle
from storage.assistants import claim_thread, list_objects, release_thread
from storage.db import create_engine, session_factory
from storage.migrate import upgrade
from storage.models import Assistant, Thread, ThreadRun
from tests.conftest import DATABASES

pytestmark = pytest.mark.parametrize("database_url", DATABASES, indirect=True)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(database_url)
    await upgrade(engine)
    yield session_factory(engine)
    await engine.dispose()


def waiting_run(expires_at: int) -> ThreadRun:
    run: dict[str, Any] = {
        "id": "run_1",
        "object": "thread.run",
        "thread_id": "thread_1",
        "status": "requires_action",
        "required_action": {"type": "submit_tool_outputs"},
        "expires_at": expires_at,
    }
    return ThreadRun(
        id="run_1",
        tenant="a",
        created_at=1,
        data=dump(run),
        thread_id="thread_1",
        status="requires_action",
        heartbeat_at=1.0,
    )


async def test_pages_in_both_directions(db: async_sessionmaker[AsyncSession]) -> None:
    async with db() as session:
        for i in range(5):
            session.add(Assistant(id=f"asst_{i}", tenant="a", created_at=1, data="{}"))
        session.add(Assistant(id="asst_b", tenant="b", created_at=1, data="{}"))
        await session.commit()

        async def ids(**kw: Any) -> tuple[list[str], bool]:
            rows, more = await list_objects(session, Assistant, tenant="a", **kw)
            return [r.id for r in rows], more

        assert await ids(limit=2, order="desc") == (["asst_4", "asst_3"], True)
        assert await ids(limit=2, order="desc", after="asst_3") == (["asst_2", "asst_1"], True)
        assert await ids(limit=2, order="desc", before="asst_1") == (["asst_3", "asst_2"], True)
        assert await ids(limit=9, order="asc", after="asst_2") == (["asst_3", "asst_4"], False)
        assert await ids(limit=9, order="asc", before="asst_2") == (["asst_0", "asst_1"], False)
        # Another tenant's id is no cursor.
        assert await ids(limit=1, order="asc", after="asst_b") == (["asst_0"], True)


async def test_a_thread_holds_one_active_run(db: async_sessionmaker[AsyncSession]) -> None:
    async with db() as session:
        session.add(Thread(id="thread_1", tenant="a", created_at=1, data="{}"))
        await session.commit()
        assert not await claim_thread(session, tenant="b", thread_id="thread_1", run_id="run_x")
        assert await claim_thread(session, tenant="a", thread_id="thread_1", run_id="run_1")
        assert not await claim_thread(session, tenant="a", thread_id="thread_1", run_id="run_2")
        await release_thread(session, thread_id="thread_1", run_id="run_2")  # not its run
        assert not await claim_thread(session, tenant="a", thread_id="thread_1", run_id="run_2")
        await release_thread(session, thread_id="thread_1", run_id="run_1")
        assert await claim_thread(session, tenant="a", thread_id="thread_1", run_id="run_2")
        await session.commit()


async def test_two_parties_ending_the_same_run(db: async_sessionmaker[AsyncSession]) -> None:
    """A reader that loses the race to expire a run sees it as the winner left it."""
    now = time.time()
    async with db() as session:
        session.add(Thread(id="thread_1", tenant="a", created_at=1, data="{}"))
        session.add(waiting_run(expires_at=int(now) - 5))
        await session.commit()
    async with db() as loser, db() as winner:
        stale = await loser.get(ThreadRun, 1)
        assert stale is not None and stale.status == "requires_action"
        fresh = await winner.get(ThreadRun, 1)
        assert fresh is not None
        won = await settle(winner, fresh, now=now, silent_since=now - 15, local=False)
        assert won.status == "expired"
        lost = await settle(loser, stale, now=now, silent_since=now - 15, local=False)
        assert lost.status == "expired" and public(lost)["status"] == "expired"
