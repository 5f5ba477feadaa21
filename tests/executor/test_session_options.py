"""Per-session options (a container's memory cap and idle timeout) reach the sandbox, in
process and over the internal API."""

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from executor.api import Executor, InvalidRequest, SessionNotFound, SessionOptions
from executor.app import create_app
from executor.client import HttpExecutorClient
from executor.models import ExecuteRequest
from executor.service import ExecutorService
from tests.executor.fakes import FakeBackend, make_settings
from tests.servers import serve_app

TOKEN = "internal-test-token"


@pytest.fixture
def backend(tmp_path: Path) -> FakeBackend:
    return FakeBackend(tmp_path / "sandboxes")


@pytest.fixture
async def service(backend: FakeBackend) -> AsyncIterator[ExecutorService]:
    service = ExecutorService(
        make_settings(
            memory_limit_mb=512,
            memory_limit_max_mb=4096,
            session_idle_timeout=60,
            session_idle_timeout_max=600,
            internal_token=SecretStr(TOKEN),
        ),
        backend=backend,
    )
    await service.start()
    yield service
    await service.aclose()


@pytest.fixture(params=["in-process", "http"])
async def executor(
    request: pytest.FixtureRequest, service: ExecutorService
) -> AsyncIterator[Executor]:
    if request.param == "in-process":
        yield service
        return
    settings = make_settings(internal_token=SecretStr(TOKEN))
    async with serve_app(create_app(settings, service=service)) as url:
        client = HttpExecutorClient(url, TOKEN)
        await client.start()
        try:
            yield client
        finally:
            await client.aclose()


async def test_memory_limit_reaches_the_sandbox_and_its_replacement(
    executor: Executor, backend: FakeBackend
) -> None:
    info = await executor.create_session("a", SessionOptions(memory_limit_mb=2048))
    assert backend.sandboxes[0].memory_limits == [2048]
    backend.sandboxes[0].kill()
    result = await executor.execute("a", ExecuteRequest(session_id=info.id, code="print(1)"))
    assert result.state_lost
    assert backend.sandboxes[1].memory_limits == [2048]


async def test_the_default_memory_limit_changes_nothing(
    executor: Executor, backend: FakeBackend
) -> None:
    await executor.create_session("a", SessionOptions(memory_limit_mb=512))
    await executor.create_session("a")
    assert [s.memory_limits for s in backend.sandboxes] == [[], []]


async def test_memory_above_the_maximum_is_refused_and_holds_nothing(
    executor: Executor, service: ExecutorService
) -> None:
    with pytest.raises(InvalidRequest) as exc:
        await executor.create_session("a", SessionOptions(memory_limit_mb=8192))
    assert exc.value.param == "memory_limit"
    assert "4096" in exc.value.message
    assert (await service.health()).sandboxes == 0
    assert await executor.list_sessions("a") == []


async def test_idle_timeout_is_the_sessions_own(executor: Executor) -> None:
    short = await executor.create_session("a", SessionOptions(idle_timeout=0.2))
    default = await executor.create_session("a")
    assert short.expires_at - short.last_active_at == pytest.approx(0.2)
    assert default.expires_at - default.last_active_at == pytest.approx(60)
    await asyncio.sleep(0.3)
    with pytest.raises(SessionNotFound):
        await executor.get_session("a", short.id)
    assert (await executor.get_session("a", default.id)).id == default.id


async def test_idle_timeout_above_the_maximum_is_refused(executor: Executor) -> None:
    with pytest.raises(InvalidRequest) as exc:
        await executor.create_session("a", SessionOptions(idle_timeout=601))
    assert exc.value.param == "expires_after"


async def test_a_sandbox_without_its_own_memory_cap_refuses_one(
    tmp_path: Path,
) -> None:
    class UncappedBackend(FakeBackend):
        async def create(self):  # type: ignore[no-untyped-def]
            sandbox = await super().create()
            return _Uncapped(sandbox)

    backend = UncappedBackend(tmp_path / "uncapped")
    service = ExecutorService(make_settings(memory_limit_max_mb=2048), backend=backend)
    await service.start()
    try:
        with pytest.raises(InvalidRequest) as exc:
            await service.create_session("a", SessionOptions(memory_limit_mb=2048))
        assert exc.value.param == "memory_limit"
        assert (await service.health()).sandboxes == 0
        assert backend.sandboxes[0].closed
    finally:
        await service.aclose()


class _Uncapped:
    """A fake sandbox without `set_memory_limit`, like a backend whose template fixes memory."""

    def __init__(self, inner: object) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> object:
        if name == "set_memory_limit":
            raise AttributeError(name)
        return getattr(self._inner, name)
