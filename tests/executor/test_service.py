"""ExecutorService against the fake backend: pool, limits, sessions, leases, as a caller sees
them (its answers, its errors and `health()`) and as the sandboxes see them (the fake's
record of runs and closes)."""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from executor.errors import (
    CapacityExhausted,
    FileTooLarge,
    InvalidRequest,
    QuotaExceeded,
    SandboxFileNotFound,
    SandboxUnavailable,
    SessionEvicted,
    SessionExpired,
    SessionNotFound,
    UnsupportedLanguage,
)
from executor.languages import Language
from executor.models import ExecuteRequest, PoolHealth, SessionInfo, SessionOptions
from executor.service import ExecutorService
from tests.executor.conftest import HANG, eventually
from tests.executor.fakes import FakeBackend, FakeSandbox, make_settings

Factory = Callable[..., Awaitable[ExecutorService]]


@pytest.fixture
def backend(tmp_path: Path) -> FakeBackend:
    return FakeBackend(tmp_path / "sandboxes")


@pytest.fixture
async def make_service(backend: FakeBackend) -> AsyncIterator[Factory]:
    services: list[ExecutorService] = []

    async def make(**overrides: Any) -> ExecutorService:
        service = ExecutorService(make_settings(**overrides), backend=backend)
        await service.start()
        services.append(service)
        return service

    yield make
    for service in services:
        await service.aclose()


def health_is(service: ExecutorService, **expected: Any) -> Callable[[], Awaitable[bool]]:
    """A check for `eventually`: the service's health has these values."""

    async def check() -> bool:
        health = (await service.health()).model_dump()
        return all(health[k] == v for k, v in expected.items())

    return check


async def health(service: ExecutorService) -> PoolHealth:
    return await service.health()


def req(session_id: str, code: str, **kw: Any) -> ExecuteRequest:
    return ExecuteRequest(session_id=session_id, code=code, **kw)


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def occupy(service: ExecutorService, tenant: str, info: SessionInfo) -> asyncio.Task[Any]:
    """Keep a session busy running code until the returned task is cancelled."""
    run = asyncio.create_task(service.execute(tenant, req(info.id, "#fake: block", timeout=300)))
    await eventually(lambda: _status(service, tenant, info.id, "busy"))
    return run


async def _status(service: ExecutorService, tenant: str, session_id: str, status: str) -> bool:
    return (await service.get_session(tenant, session_id)).status == status


async def stop(run: asyncio.Task[Any]) -> None:
    run.cancel()
    with pytest.raises((asyncio.CancelledError, SessionNotFound)):
        await run


async def used(
    service: ExecutorService, tenant: str, options: SessionOptions | None = None
) -> SessionInfo:
    """A new session that has run code (so that it is no longer fresh)."""
    info = await service.create_session(tenant, options)
    await service.execute(tenant, req(info.id, "pass"))
    return info


def ran_in(sandbox: FakeSandbox) -> list[str]:
    return [r.code for r in sandbox.runs]


# Pool


async def test_pool_hit_takes_the_warm_sandbox(make_service: Factory, backend: FakeBackend) -> None:
    backend.start_delay = 0.05
    service = await make_service(pool_size=1)
    await eventually(health_is(service, warm=1))
    warm = backend.sandboxes[0]

    info = await service.create_session("a")

    assert info.id.startswith("cntr_")
    assert len(backend.sandboxes) == 1  # the refill has not finished a new one yet
    await service.execute("a", req(info.id, "x = 1"))
    assert ran_in(warm) == ["x = 1"]


async def test_pool_refills_in_the_background(make_service: Factory, backend: FakeBackend) -> None:
    service = await make_service(pool_size=2)
    await eventually(health_is(service, warm=2))
    await service.create_session("a")
    await eventually(health_is(service, warm=2))
    assert len(backend.sandboxes) == 3
    now = await health(service)
    assert (now.warm, now.sandboxes, now.busy, now.sessions) == (2, 3, 0, 1)
    assert now.status == "ok"
    assert now.backend == "fake"


async def test_cold_start_without_pool(make_service: Factory, backend: FakeBackend) -> None:
    service = await make_service(pool_size=0)
    info = await service.create_session("a")
    assert len(backend.sandboxes) == 1
    assert (await health(service)).warm == 0
    result = await service.execute("a", req(info.id, "1 + 1"))
    assert result.results[0].data["text/plain"] == "2"


async def test_warm_sandboxes_count_against_the_maximum(
    make_service: Factory, backend: FakeBackend
) -> None:
    service = await make_service(pool_size=2, max_sandboxes=2, max_sandboxes_per_tenant=4)
    await eventually(health_is(service, warm=2))
    a = await service.create_session("a")
    b = await service.create_session("b")
    await asyncio.sleep(0.05)
    # Both warm sandboxes became sessions; no refill past the maximum.
    assert len(backend.sandboxes) == 2
    assert (await health(service)).sandboxes == 2
    runs = [await occupy(service, "a", a), await occupy(service, "b", b)]
    with pytest.raises(CapacityExhausted):
        await service.create_session("c")
    for run in runs:
        await stop(run)


async def test_dead_warm_sandbox_is_discarded(make_service: Factory, backend: FakeBackend) -> None:
    service = await make_service(pool_size=1)
    await eventually(health_is(service, warm=1))
    backend.sandboxes[0].kill()
    info = await service.create_session("a")
    await service.execute("a", req(info.id, "pass"))
    assert ran_in(backend.sandboxes[0]) == []
    assert any(ran_in(s) == ["pass"] for s in backend.sandboxes[1:])
    await eventually(lambda: backend.sandboxes[0].closed)


async def test_failed_refill_backs_off_and_reports_degraded(
    make_service: Factory, backend: FakeBackend
) -> None:
    backend.fail_creates = 1
    service = await make_service(pool_size=1)
    await eventually(health_is(service, status="degraded"))
    await eventually(health_is(service, warm=1))
    assert (await health(service)).status == "ok"
    assert (await health(service)).sandboxes == 1


async def test_failed_start_frees_the_slot(make_service: Factory, backend: FakeBackend) -> None:
    service = await make_service(pool_size=0, max_sandboxes=1)
    backend.fail_creates = 1
    with pytest.raises(SandboxUnavailable):
        await service.create_session("a")
    assert (await health(service)).sandboxes == 0
    await service.create_session("a")


async def test_cancelled_acquisition_frees_its_slot(
    make_service: Factory, backend: FakeBackend
) -> None:
    backend.start_delay = 60
    service = await make_service(max_sandboxes=1)
    creating = asyncio.create_task(service.create_session("a"))
    await eventually(health_is(service, sandboxes=1))
    creating.cancel()
    with pytest.raises(asyncio.CancelledError):
        await creating
    assert (await health(service)).sandboxes == 0
    backend.start_delay = 0
    await service.create_session("a")


# Capacity and quotas


async def test_capacity_waits_then_raises_503_with_retry_after(make_service: Factory) -> None:
    service = await make_service(max_sandboxes=2, acquire_timeout=0.2)
    runs = [await occupy(service, t, await service.create_session(t)) for t in ("a", "b")]
    waiting = asyncio.create_task(service.create_session("c"))
    await eventually(health_is(service, waiting=1))
    with pytest.raises(CapacityExhausted) as caught:
        await waiting
    assert caught.value.retry_after is not None and caught.value.retry_after >= 1
    assert caught.value.status == 503
    assert (await health(service)).waiting == 0
    for run in runs:
        await stop(run)


async def test_a_tenant_whose_sessions_are_all_busy_gets_429(make_service: Factory) -> None:
    service = await make_service(max_sandboxes=4, max_sandboxes_per_tenant=1, acquire_timeout=0.1)
    busy = await service.create_session("a")
    run = await occupy(service, "a", busy)
    with pytest.raises(QuotaExceeded) as caught:
        await service.create_session("a")
    assert caught.value.status == 429 and caught.value.code == "rate_limit_exceeded"
    assert "tenant" in caught.value.message
    assert caught.value.retry_after is not None and caught.value.retry_after >= 1
    await service.create_session("b")  # another tenant is not held up
    await stop(run)


async def test_capacity_wait_is_served_when_a_session_ends(make_service: Factory) -> None:
    service = await make_service(max_sandboxes=1, acquire_timeout=HANG)
    first = await service.create_session("a")
    run = await occupy(service, "a", first)
    waiting = asyncio.create_task(service.create_session("b"))
    await eventually(health_is(service, waiting=1))
    await service.delete_session("a", first.id)
    with pytest.raises(SessionNotFound):
        await run
    second = await waiting
    assert second.tenant == "b"


async def test_a_waiting_request_takes_over_the_session_that_goes_idle(
    make_service: Factory, backend: FakeBackend
) -> None:
    service = await make_service(max_sandboxes_per_tenant=2, acquire_timeout=HANG)
    old = await service.create_session("a")
    recent = await service.create_session("a")
    runs = [await occupy(service, "a", old), await occupy(service, "a", recent)]
    waiting = asyncio.create_task(service.create_session("a"))
    await eventually(health_is(service, waiting=1))
    await stop(runs[0])  # `old` finishes its code: idle, so it can be taken over

    new = await waiting
    with pytest.raises(SessionEvicted) as caught:
        await service.get_session("a", old.id)
    assert caught.value.code == "session_evicted" and caught.value.status == 404
    assert "evicted" in caught.value.message
    assert {s.id for s in await service.list_sessions("a")} == {recent.id, new.id}
    assert (await health(service)).evicted == 1
    await eventually(lambda: backend.sandboxes[0].closed)
    await stop(runs[1])


async def test_waiters_are_served_first_come_first_served(make_service: Factory) -> None:
    service = await make_service(max_sandboxes=1, acquire_timeout=HANG)
    holder = await service.create_session("a")
    run = await occupy(service, "a", holder)
    served: list[str] = []

    async def wait_for_one(tenant: str) -> None:
        info = await service.create_session(tenant)
        served.append(tenant)
        await service.delete_session(tenant, info.id)

    waiters = []
    for n, tenant in enumerate(("first", "second", "third"), start=1):
        waiters.append(asyncio.create_task(wait_for_one(tenant)))
        await eventually(health_is(service, waiting=n))
    await stop(run)
    await asyncio.gather(*waiters)
    assert served == ["first", "second", "third"]


async def test_a_tenant_at_its_limit_gives_up_its_least_recently_used_idle_session(
    make_service: Factory,
) -> None:
    service = await make_service(max_sandboxes=4, max_sandboxes_per_tenant=2, acquire_timeout=0)
    old = await service.create_session("a")
    recent = await service.create_session("a")
    await service.execute("a", req(recent.id, "x = 1"))
    await service.execute("a", req(old.id, "pass"))
    await service.execute("a", req(recent.id, "x += 1"))
    other = await service.create_session("b")
    third = await service.create_session("a")
    with pytest.raises(SessionEvicted):
        await service.get_session("a", old.id)
    assert {s.id for s in await service.list_sessions("a")} == {recent.id, third.id}
    assert (await service.get_session("b", other.id)).status == "active"
    assert (await service.execute("a", req(recent.id, "print(x)"))).stdout == "2\n"


async def test_an_end_user_at_its_limit_gives_up_only_its_own_sessions(
    make_service: Factory,
) -> None:
    service = await make_service(max_sandboxes_per_user=1, acquire_timeout=0)
    alice, bob = SessionOptions(user="alice"), SessionOptions(user="bob")
    bobs = await used(service, "app", bob)  # idle longest of the tenant
    alices = await used(service, "app", alice)
    again = await service.create_session("app", alice)
    assert again.user == "alice"
    with pytest.raises(SessionEvicted):
        await service.get_session("app", alices.id)
    assert (await service.get_session("app", bobs.id)).status == "active"
    # A user whose one session is busy waits, then gets a 429 naming the end user.
    run = await occupy(service, "app", again)
    with pytest.raises(QuotaExceeded) as caught:
        await service.create_session("app", alice)
    assert "end user" in caught.value.message
    await stop(run)


async def test_a_full_service_takes_over_the_longest_idle_session_of_anyone(
    make_service: Factory,
) -> None:
    service = await make_service(max_sandboxes=2, acquire_timeout=HANG)
    older = await used(service, "a")
    newer = await used(service, "b")
    await service.create_session("c")
    with pytest.raises(SessionEvicted):
        await service.get_session("a", older.id)
    assert (await service.get_session("b", newer.id)).status == "active"
    assert (await health(service)).sessions == 2


async def test_a_session_that_has_not_run_yet_is_not_taken_over(make_service: Factory) -> None:
    # Between its creation and its first run a session is idle: a waiting request must not
    # take it from its creator in that moment.
    service = await make_service(max_sandboxes_per_tenant=1, acquire_timeout=0.1)
    fresh = await service.create_session("a")
    with pytest.raises(QuotaExceeded):
        await service.create_session("a")
    assert (await service.execute("a", req(fresh.id, "print('mine')"))).stdout == "mine\n"
    # Once it has run code, it can be taken over when it is idle.
    await service.create_session("a")
    with pytest.raises(SessionEvicted):
        await service.get_session("a", fresh.id)


# Sessions


async def test_another_tenants_session_is_not_found(make_service: Factory) -> None:
    service = await make_service()
    mine = await service.create_session("a")
    await service.upload_file("a", mine.id, "secret.txt", chunks(b"x"))
    with pytest.raises(SessionNotFound):
        await service.get_session("b", mine.id)
    with pytest.raises(SessionNotFound):
        await service.execute("b", req(mine.id, "print(1)"))
    with pytest.raises(SessionNotFound):
        await service.list_files("b", mine.id)
    with pytest.raises(SessionNotFound):
        await service.read_file("b", mine.id, "secret.txt")
    with pytest.raises(SessionNotFound):
        await service.upload_file("b", mine.id, "x.txt", chunks(b"x"))
    with pytest.raises(SessionNotFound):
        await service.delete_session("b", mine.id)
    assert await service.list_sessions("b") == []
    assert [s.id for s in await service.list_sessions("a")] == [mine.id]
    # The message does not reveal whether the id exists.
    with pytest.raises(SessionNotFound) as other:
        await service.get_session("b", mine.id)
    with pytest.raises(SessionNotFound) as missing:
        await service.get_session("b", "cntr_nope")
    assert other.value.message.replace(mine.id, "") == missing.value.message.replace(
        "cntr_nope", ""
    )


async def test_why_a_session_ended_is_told_to_its_owner_only(make_service: Factory) -> None:
    service = await make_service(max_sandboxes_per_tenant=1, acquire_timeout=0)
    evicted = await used(service, "a")
    await service.create_session("a")
    with pytest.raises(SessionEvicted):
        await service.execute("a", req(evicted.id, "pass"))
    with pytest.raises(SessionNotFound) as other:
        await service.get_session("b", evicted.id)
    assert type(other.value) is SessionNotFound and "evicted" not in other.value.message


async def test_idle_session_is_reaped(make_service: Factory, backend: FakeBackend) -> None:
    service = await make_service(session_idle_timeout=0.2, reaper_interval=0.05)
    info = await service.create_session("a")
    await eventually(health_is(service, sessions=0, sandboxes=0, expired=1))
    assert backend.sandboxes[0].closed
    with pytest.raises(SessionExpired) as caught:
        await service.get_session("a", info.id)
    assert caught.value.code == "session_expired"


async def test_use_refreshes_last_active(make_service: Factory) -> None:
    service = await make_service(session_idle_timeout=600)
    info = await service.create_session("a")
    await asyncio.sleep(0.05)
    await service.execute("a", req(info.id, "pass"))
    after = await service.get_session("a", info.id)
    assert after.last_active_at > info.last_active_at
    assert after.expires_at == pytest.approx(after.last_active_at + 600)
    assert after.executions == 1


async def test_expired_session_is_not_found_before_the_reaper_runs(
    make_service: Factory, backend: FakeBackend
) -> None:
    service = await make_service(session_idle_timeout=0.1, reaper_interval=600)
    info = await service.create_session("a")
    await asyncio.sleep(0.15)
    with pytest.raises(SessionExpired):
        await service.get_session("a", info.id)
    await eventually(lambda: backend.sandboxes[0].closed)


async def test_expired_sessions_free_capacity_for_new_ones(
    make_service: Factory, backend: FakeBackend
) -> None:
    service = await make_service(
        max_sandboxes=1, session_idle_timeout=0.1, reaper_interval=600, acquire_timeout=HANG
    )
    old = await service.create_session("a")
    await asyncio.sleep(0.15)
    new = await service.create_session("b")
    assert [s.id for s in await service.list_sessions("b")] == [new.id]
    # The old session's sandbox went to the new one because it expired, and says so.
    with pytest.raises(SessionExpired):
        await service.get_session("a", old.id)
    now = await health(service)
    assert (now.sessions, now.expired, now.evicted) == (1, 1, 0)
    await eventually(lambda: backend.sandboxes[0].closed)


async def test_delete_session(make_service: Factory, backend: FakeBackend) -> None:
    service = await make_service()
    info = await service.create_session("a")
    await service.delete_session("a", info.id)
    assert backend.sandboxes[0].closed
    assert (await health(service)).sandboxes == 0
    with pytest.raises(SessionNotFound):
        await service.get_session("a", info.id)
    with pytest.raises(SessionNotFound):
        await service.delete_session("a", info.id)


async def test_operations_before_start_are_unavailable(backend: FakeBackend) -> None:
    service = ExecutorService(make_settings(), backend=backend)
    with pytest.raises(SandboxUnavailable):
        await service.create_session("a")
    assert (await service.health()).status == "degraded"


# Execution


async def test_state_is_kept_between_executions(make_service: Factory) -> None:
    service = await make_service()
    info = await service.create_session("a")
    first = await service.execute("a", req(info.id, "x = 41"))
    second = await service.execute("a", req(info.id, "print(x + 1)"))
    assert first.stdout == ""
    assert second.stdout == "42\n"
    assert second.session_id == info.id
    assert second.language == "python"
    assert not second.state_lost


async def test_timeout_defaults_and_limits(make_service: Factory, backend: FakeBackend) -> None:
    service = await make_service(exec_timeout=7, exec_timeout_max=20)
    info = await service.create_session("a")
    await service.execute("a", req(info.id, "pass"))
    await service.execute("a", req(info.id, "pass", timeout=20))
    assert [r.timeout for r in backend.sandboxes[0].runs] == [7, 20]
    with pytest.raises(InvalidRequest) as caught:
        await service.execute("a", req(info.id, "pass", timeout=21))
    assert caught.value.param == "timeout"


async def test_a_timed_out_run_leaves_the_session_usable(make_service: Factory) -> None:
    service = await make_service()
    info = await service.create_session("a")
    await service.execute("a", req(info.id, "x = 'kept'"))
    result = await service.execute("a", req(info.id, "#fake: block", timeout=0.05))
    assert result.timed_out and result.session_id == info.id
    after = await service.get_session("a", info.id)
    assert (after.status, after.executions) == ("active", 2)
    assert (await service.execute("a", req(info.id, "print(x)"))).stdout == "kept\n"


async def test_language_is_parsed(make_service: Factory, backend: FakeBackend) -> None:
    service = await make_service()
    info = await service.create_session("a")
    result = await service.execute("a", req(info.id, "echo hi", language="SH"))
    assert result.language == "bash"
    assert backend.sandboxes[0].runs[0].language is Language.BASH
    with pytest.raises(UnsupportedLanguage):
        await service.execute("a", req(info.id, "x", language="cobol"))


async def test_session_is_busy_while_running(make_service: Factory) -> None:
    service = await make_service()
    info = await service.create_session("a")
    run = await occupy(service, "a", info)
    assert (await health(service)).busy == 1
    await stop(run)
    assert (await service.get_session("a", info.id)).status == "active"
    assert (await health(service)).busy == 0


async def test_executions_in_one_session_run_one_at_a_time(
    make_service: Factory, backend: FakeBackend
) -> None:
    service = await make_service()
    info = await service.create_session("a")
    code = "#fake: sleep 0.02\nprint(1)"
    results = await asyncio.gather(*(service.execute("a", req(info.id, code)) for _ in range(3)))
    assert [r.stdout for r in results] == ["1\n"] * 3
    assert backend.sandboxes[0].max_active == 1


async def test_cancelling_execute_interrupts_and_releases_the_lease(
    make_service: Factory, backend: FakeBackend
) -> None:
    service = await make_service()
    info = await service.create_session("a")
    sandbox = backend.sandboxes[0]
    run = asyncio.create_task(service.execute("a", req(info.id, "#fake: block", timeout=60)))
    await eventually(sandbox.running.is_set)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert sandbox.cancelled_runs == 1
    assert (await service.get_session("a", info.id)).status == "active"
    result = await asyncio.wait_for(service.execute("a", req(info.id, "print(2)")), HANG)
    assert result.stdout == "2\n"


async def test_deleting_a_busy_session_stops_its_code(
    make_service: Factory, backend: FakeBackend
) -> None:
    service = await make_service()
    info = await service.create_session("a")
    run = asyncio.create_task(service.execute("a", req(info.id, "#fake: block", timeout=60)))
    await eventually(backend.sandboxes[0].running.is_set)
    await asyncio.wait_for(service.delete_session("a", info.id), HANG)
    with pytest.raises(SessionNotFound):
        await run
    assert backend.sandboxes[0].cancelled_runs == 1
    assert backend.sandboxes[0].closed


async def test_a_run_that_ignores_cancellation_cannot_block_delete(
    make_service: Factory, backend: FakeBackend
) -> None:
    service = await make_service(interrupt_grace=0)
    info = await service.create_session("a")
    run = asyncio.create_task(service.execute("a", req(info.id, "#fake: stubborn", timeout=60)))
    await eventually(backend.sandboxes[0].running.is_set)
    # The run never stops by itself; delete gives up waiting for it and closes the sandbox.
    await asyncio.wait_for(service.delete_session("a", info.id), HANG)
    assert backend.sandboxes[0].closed
    assert (await health(service)).sandboxes == 0
    with pytest.raises(SessionNotFound):
        await run


async def test_dead_sandbox_is_replaced(make_service: Factory, backend: FakeBackend) -> None:
    service = await make_service()
    info = await service.create_session("a")
    await service.execute("a", req(info.id, "x = 1"))
    backend.sandboxes[0].kill()
    result = await service.execute("a", req(info.id, "print('fresh')"))
    assert result.stdout == "fresh\n"
    assert result.state_lost
    assert backend.sandboxes[0].closed
    assert ran_in(backend.sandboxes[1]) == ["print('fresh')"]
    assert (await health(service)).sandboxes == 1
    later = await service.execute("a", req(info.id, "pass"))
    assert not later.state_lost


async def test_dead_sandbox_replaced_by_a_warm_one(
    make_service: Factory, backend: FakeBackend
) -> None:
    service = await make_service(pool_size=1)
    await eventually(health_is(service, warm=1))
    info = await service.create_session("a")
    await eventually(health_is(service, warm=1))
    await service.execute("a", req(info.id, "pass"))
    [mine] = [s for s in backend.sandboxes if s.runs]
    mine.kill()
    result = await service.execute("a", req(info.id, "print(1)"))
    assert result.state_lost
    [replacement] = [s for s in backend.sandboxes if ran_in(s) == ["print(1)"]]
    assert replacement is not mine and len(backend.sandboxes) >= 2
    await eventually(health_is(service, warm=1, sandboxes=2))


async def test_failed_replacement_is_retried_next_time(
    make_service: Factory, backend: FakeBackend
) -> None:
    service = await make_service()
    info = await service.create_session("a")
    backend.sandboxes[0].kill()
    backend.fail_creates = 1
    with pytest.raises(SandboxUnavailable):
        await service.execute("a", req(info.id, "pass"))
    result = await service.execute("a", req(info.id, "print(3)"))
    assert result.stdout == "3\n"
    assert result.state_lost
    assert (await health(service)).sandboxes == 1


async def test_changed_files_are_reported(make_service: Factory) -> None:
    service = await make_service()
    info = await service.create_session("a")
    await service.upload_file("a", info.id, "in.csv", chunks(b"a,b\n", b"1,2\n"))
    await service.upload_file("a", info.id, "keep.txt", chunks(b"same"))
    code = (
        "import os\n"
        "os.makedirs(DATA_DIR + '/out')\n"
        "with open(DATA_DIR + '/out/chart.png', 'wb') as f:\n    f.write(b'png!')\n"
        "with open(DATA_DIR + '/in.csv', 'a') as f:\n    f.write('3,4\\n')\n"
    )
    result = await service.execute("a", req(info.id, code))
    assert result.error is None
    changed = {f.path: f.size for f in result.files}
    assert changed == {"/mnt/data/out/chart.png": 4, "/mnt/data/in.csv": 12}


async def test_uploads_between_executions_are_not_reported(make_service: Factory) -> None:
    service = await make_service()
    info = await service.create_session("a")
    await service.execute("a", req(info.id, "pass"))
    await service.upload_file("a", info.id, "uploaded.txt", chunks(b"x"))
    result = await service.execute("a", req(info.id, "pass"))
    assert result.files == []
    code = "with open(DATA_DIR + '/uploaded.txt', 'w') as f:\n    f.write('changed')"
    result = await service.execute("a", req(info.id, code))
    assert [f.path for f in result.files] == ["/mnt/data/uploaded.txt"]


async def test_files_round_trip(make_service: Factory) -> None:
    service = await make_service()
    info = await service.create_session("a")
    entry = await service.upload_file("a", info.id, "/mnt/data/dir/x.bin", chunks(b"ab", b"cd"))
    assert (entry.path, entry.size) == ("/mnt/data/dir/x.bin", 4)
    listed = await service.list_files("a", info.id)
    assert [f.path for f in listed] == ["/mnt/data/dir/x.bin"]
    stream = await service.read_file("a", info.id, "dir/x.bin")
    assert b"".join([c async for c in stream]) == b"abcd"
    with pytest.raises(SandboxFileNotFound):
        await service.read_file("a", info.id, "nope.txt")
    with pytest.raises(InvalidRequest):
        await service.upload_file("a", info.id, "../escape", chunks(b"x"))
    with pytest.raises(InvalidRequest):
        await service.read_file("a", info.id, "/etc/passwd")


async def test_upload_limit(make_service: Factory) -> None:
    service = await make_service(max_file_bytes=10)
    info = await service.create_session("a")
    with pytest.raises(FileTooLarge):
        await service.upload_file("a", info.id, "big", chunks(b"123456", b"789012"))
    await service.upload_file("a", info.id, "ok", chunks(b"1234567890"))


# Shutdown


async def test_shutdown_closes_everything(backend: FakeBackend) -> None:
    tasks_before = asyncio.all_tasks()
    service = ExecutorService(make_settings(pool_size=2), backend=backend)
    await service.start()
    await eventually(health_is(service, warm=2))
    info = await service.create_session("a")
    await service.create_session("b")
    run = asyncio.create_task(service.execute("a", req(info.id, "#fake: block", timeout=60)))
    await eventually(lambda: any(s.running.is_set() for s in backend.sandboxes))

    await asyncio.wait_for(service.aclose(), HANG)

    with pytest.raises(SandboxUnavailable):
        await run
    assert backend.live == []
    assert backend.closed
    assert all(s.closes == 1 for s in backend.sandboxes)
    assert not list(backend.root.iterdir())
    # No background task of the service is left behind.
    assert asyncio.all_tasks() - tasks_before == set()
    await service.aclose()


async def test_shutdown_cancels_sandbox_starts_and_waiters(backend: FakeBackend) -> None:
    backend.start_delay = 60
    service = ExecutorService(make_settings(pool_size=1, max_sandboxes=1), backend=backend)
    await service.start()
    creating = asyncio.create_task(service.create_session("a"))
    await eventually(health_is(service, waiting=1))
    await asyncio.wait_for(service.aclose(), HANG)
    with pytest.raises(SandboxUnavailable):
        await creating
    assert backend.sandboxes == []
