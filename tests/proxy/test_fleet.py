"""Several execution nodes behind one proxy, found through the database: nodes on fake
backends served on loopback, and `Fleet`s sharing one real database as proxy processes do."""

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from executor.api import ExecuteRequest, SandboxUnavailable, SessionNotFound
from executor.app import create_app
from executor.service import ExecutorService
from proxy.fleet import Fleet
from storage.db import create_engine, session_factory
from storage.migrate import upgrade
from tests.conftest import DATABASES
from tests.executor.fakes import FakeBackend, make_settings
from tests.servers import serve_app

pytestmark = pytest.mark.parametrize("database_url", DATABASES, indirect=True)
TOKEN = "fleet-test-token"
DEAD_AFTER = 20.0


class Node:
    """One node: its URL, and stop/restart as a crash and a restart would."""

    def __init__(self, tmp_path: Path, name: str, port: int = 0) -> None:
        self.tmp_path = tmp_path
        self.name = name
        self.port = port
        self.url = ""
        self._running: tuple[Any, ExecutorService] | None = None

    async def start(self) -> None:
        settings = make_settings(internal_token=SecretStr(TOKEN), node_id=self.name)
        service = ExecutorService(settings, backend=FakeBackend(self.tmp_path / self.name))
        await service.start()
        server = serve_app(create_app(settings, service=service), port=self.port)
        self.url = await server.__aenter__()
        self.port = int(self.url.rsplit(":", 1)[1])
        self._running = (server, service)

    async def stop(self) -> None:
        if self._running is not None:
            server, service = self._running
            self._running = None
            await server.__aexit__(None, None, None)
            await service.aclose()


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[list[Node]]:
    started = [Node(tmp_path, "node-one"), Node(tmp_path, "node-two")]
    for node in started:
        await node.start()
    yield started
    for node in started:
        await node.stop()


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def make_fleet(database_url: str, nodes: list[Node]) -> AsyncIterator[Callable[..., Any]]:
    engine = create_engine(database_url)
    await upgrade(engine)
    fleets: list[Fleet] = []

    async def make(clock: Clock) -> Fleet:
        fleet = Fleet(
            [n.url for n in nodes],
            TOKEN,
            session_factory(engine),
            heartbeat_interval=3600,  # polled by hand here: health() polls every node
            dead_after=DEAD_AFTER,
            clock=clock,
        )
        await fleet.start()
        fleets.append(fleet)
        return fleet

    yield make
    for fleet in fleets:
        await fleet.aclose()
    await engine.dispose()


async def run(fleet: Fleet, tenant: str, session_id: str, code: str) -> str:
    result = await fleet.execute(tenant, ExecuteRequest(session_id=session_id, code=code))
    return result.stdout


async def test_sessions_spread_and_are_found_by_any_process(
    make_fleet: Callable[..., Any], nodes: list[Node]
) -> None:
    clock = Clock()
    one, other = await make_fleet(clock), await make_fleet(clock)
    sessions = [await one.create_session("a") for _ in range(4)]
    assert sorted(s.node_id or "" for s in sessions) == ["node-one"] * 2 + ["node-two"] * 2
    # Another process finds each session's node in the database and runs code there.
    for session in sessions:
        assert await run(other, "a", session.id, "x = 6 * 7\nprint(x)") == "42\n"
    assert sorted(s.id for s in await other.list_sessions("a")) == sorted(s.id for s in sessions)
    assert await other.list_sessions("b") == []
    with pytest.raises(SessionNotFound):
        await other.get_session("b", sessions[0].id)
    with pytest.raises(SessionNotFound):
        await other.get_session("a", "cntr_unknown")
    health = await other.health()
    assert (health.status, health.sessions, health.max_sandboxes) == ("ok", 4, 32)
    await other.delete_session("a", sessions[0].id)
    with pytest.raises(SessionNotFound):
        await one.get_session("a", sessions[0].id)


async def test_new_sessions_go_to_the_least_loaded_node(
    make_fleet: Callable[..., Any], nodes: list[Node]
) -> None:
    fleet = await make_fleet(Clock())
    first = await fleet.create_session("a")
    loaded = first.node_id
    # Both further sessions go elsewhere until the loads are even again.
    assert (await fleet.create_session("b")).node_id != loaded
    assert {(await fleet.create_session("c")).node_id for _ in range(2)} == {
        "node-one",
        "node-two",
    }


async def test_a_silent_node_is_dead_and_its_sessions_lost(
    make_fleet: Callable[..., Any], nodes: list[Node]
) -> None:
    clock = Clock()
    fleet = await make_fleet(clock)
    sessions = {}
    while len(sessions) < 2:
        info = await fleet.create_session("a")
        sessions[info.node_id] = info.id
    await nodes[1].stop()
    # Not yet dead: the session's node is only unreachable, which is a 503 to retry.
    with pytest.raises(SandboxUnavailable):
        await run(fleet, "a", sessions["node-two"], "print(1)")
    clock.now += DEAD_AFTER + 1
    assert (await fleet.health()).status == "degraded"
    with pytest.raises(SessionNotFound, match="was lost"):
        await run(fleet, "a", sessions["node-two"], "print(1)")
    assert await run(fleet, "a", sessions["node-one"], "print(1)") == "1\n"
    # The survivor takes every new session.
    assert {(await fleet.create_session("b")).node_id for _ in range(3)} == {"node-one"}
    await nodes[0].stop()
    clock.now += DEAD_AFTER + 1
    await fleet.health()
    with pytest.raises(SandboxUnavailable, match="No execution node is available"):
        await fleet.create_session("a")


async def test_a_restarted_node_loses_its_sessions(
    make_fleet: Callable[..., Any], nodes: list[Node]
) -> None:
    clock = Clock()
    fleet = await make_fleet(clock)
    sessions = {}
    while len(sessions) < 2:
        info = await fleet.create_session("a")
        sessions[info.node_id] = info.id
    await nodes[1].stop()
    await nodes[1].start()  # same name, same port, a new boot
    await fleet.health()
    with pytest.raises(SessionNotFound, match="was lost"):
        await fleet.get_session("a", sessions["node-two"])
    assert await run(fleet, "a", sessions["node-one"], "print(2)") == "2\n"
    # The restarted node is live again and takes sessions.
    assert "node-two" in {(await fleet.create_session("c")).node_id for _ in range(3)}
