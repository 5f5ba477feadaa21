"""ExecutorService and SandboxPool against the fake backend: pool, limits, sessions, leases."""

import asyncio
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from executor.errors import (
    CapacityExhausted,
    FileTooLarge,
    InvalidRequest,
    SandboxFileNotFound,
    SandboxUnavailable,
    SessionNotFound,
    UnsupportedLanguage,
)
from executor.languages import Language
from executor.models import ExecuteRequest
from executor.service import ExecutorService
from tests.executor.fakes import FakeBackend, make_settings

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


async def eventually(check: Callable[[], bool], timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


def req(session_id: str, code: str, **kw: Any) -> ExecuteRequest:
    return ExecuteRequest(session_id=session_id, code=code, **kw)


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


# Pool


async def test_pool_hit_takes_the_warm_sandbox(make_service: Factory, backend: FakeBackend) -> None:
    backend.start_delay = 0.05
    service = await make_service(pool_size=1)
    await eventually(lambda: service._pool.warm == 1)
    warm = backend.sandboxes[0]

    info = await service.create_session("a")

    assert info.id.startswith("cntr_")
    assert service._sessions[info.id].sandbox is warm
    assert len(backend.sandboxes) == 1  # the refill has not finished a new one yet


async def test_pool_hit_p50_within_budget(make_service: Factory, backend: FakeBackend) -> None:
    service = await make_service(pool_size=1, max_sandboxes=50, max_sandboxes_per_tenant=50)
    timings = []
    for _ in range(20):
        await eventually(lambda: service._pool.warm == 1)
        start = time.perf_counter()
        await service.create_session("a")
        timings.append(time.perf_counter() - start)
    assert statistics.median(timings) < 0.005


async def test_pool_refills_in_the_background(make_service: Factory, backend: FakeBackend) -> None:
    service = await make_service(pool_size=2)
    await eventually(lambda: service._pool.warm == 2)
    await service.create_session("a")
    await eventually(lambda: service._pool.warm == 2)
    assert len(backend.sandboxes) == 3
    health = await service.health()
    assert (health.warm, health.sandboxes, health.busy) == (2, 3, 0)
    assert health.status == "ok"
    assert health.backend == "fake"


async def test_cold_start_without_pool(make_service: Factory, backend: FakeBackend) -> None:
    service = await make_service(pool_size=0)
    info = await service.create_session("a")
    assert len(backend.sandboxes) == 1
    assert service._pool.warm == 0
    result = await service.execute("a", req(info.id, "1 + 1"))
    assert result.results[0].data["text/plain"] == "2"


async def test_warm_sandboxes_count_against_the_maximum(
    make_service: Factory, backend: FakeBackend
) -> None:
    service = await make_service(pool_size=2, max_sandboxes=2, max_sandboxes_per_tenant=4)
    await eventually(lambda: service._pool.warm == 2)
    await service.create_session("a")
    await service.create_session("b")
    await asyncio.sleep(0.05)
    # Both warm sandboxes became sessions; no refill past the maximum.
    assert len(backend.sandboxes) == 2
    with pytest.raises(CapacityExhausted):
        await service.create_session("c")


async def test_dead_warm_sandbox_is_discarded(make_service: Factory, backend: FakeBackend) -> None:
    service = await make_service(pool_size=1)
    await eventually(lambda: service._pool.warm == 1)
    backend.sandboxes[0].kill()
    info = await service.create_session("a")
    assert service._sessions[info.id].sandbox is not backend.sandboxes[0]
    await eventually(lambda: backend.sandboxes[0].closed)


async def test_failed_refill_backs_off_and_reports_degraded(
    make_service: Factory, backend: FakeBackend
) -> None:
    backend.fail_creates = 1
    service = await make_service(pool_size=1)
    await eventually(lambda: service._pool.last_error is not None)
    assert (await service.health()).status == "degraded"
    await eventually(lambda: service._pool.warm == 1)
    assert (await service.health()).status == "ok"
    assert service._pool.slots == 1


async def test_failed_start_frees_the_slot(make_service: Factory, backend: FakeBackend) -> None:
    service = await make_service(pool_size=0, max_sandboxes=1)
    backend.fail_creates = 1
    with pytest.raises(SandboxUnavailable):
        await service.create_session("a")
    assert service._pool.slots == 0
    await service.create_session("a")


async def test_cancelled_acquisition_frees_its_slot(
    make_service: Factory, backend: FakeBackend
) -> None:
    backend.start_delay = 0.2
    service = await make_service(max_sandboxes=1)
    creating = asyncio.create_task(service.create_session("a"))
    await asyncio.sleep(0.05)
    creating.cancel()
    with pytest.raises(asyncio.CancelledError):
        await creating
    assert service._pool.slots == 0
    backend.start_delay = 0
    await service.create_session("a")


# Capacity


async def test_capacity_waits_then_raises_with_retry_after(make_service: Factory) -> None:
    service = await make_service(max_sandboxes=2, acquire_timeout=0.2)
    await service.create_session("a")
    await service.create_session("b")
    start = time.monotonic()
    with pytest.raises(CapacityExhausted) as caught:
        await service.create_session("c")
    assert time.monotonic() - start >= 0.2
    assert caught.value.retry_after is not None and caught.value.retry_after >= 1
    assert caught.value.status == 503


async def test_capacity_wait_is_served_when_a_session_ends(make_service: Factory) -> None:
    service = await make_service(max_sandboxes=1, acquire_timeout=2.0)
    first = await service.create_session("a")
    waiting = asyncio.create_task(service.create_session("b"))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await service.delete_session("a", first.id)
    second = await asyncio.wait_for(waiting, 1.0)
    assert second.tenant == "b"


async def test_per_tenant_limit(make_service: Factory) -> None:
    service = await make_service(max_sandboxes=4, max_sandboxes_per_tenant=1, acquire_timeout=0.1)
    busy = await service.create_session("a")
    run = asyncio.create_task(service.execute("a", req(busy.id, "#fake: block", timeout=60)))
    await eventually(lambda: service._sessions[busy.id].busy)
    with pytest.raises(CapacityExhausted) as caught:
        await service.create_session("a")
    assert "tenant" in caught.value.message
    await service.create_session("b")
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run


async def test_tenant_at_its_limit_gives_up_its_least_recently_used_idle_session(
    make_service: Factory,
) -> None:
    service = await make_service(max_sandboxes=4, max_sandboxes_per_tenant=2, acquire_timeout=0.1)
    old = await service.create_session("a")
    recent = await service.create_session("a")
    await service.execute("a", req(recent.id, "x = 1"))
    other = await service.create_session("b")
    third = await service.create_session("a")
    with pytest.raises(SessionNotFound):
        await service.get_session("a", old.id)
    assert {s.id for s in await service.list_sessions("a")} == {recent.id, third.id}
    assert (await service.get_session("b", other.id)).status == "active"


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


async def test_idle_session_is_reaped(make_service: Factory, backend: FakeBackend) -> None:
    service = await make_service(session_idle_timeout=0.2, reaper_interval=0.05)
    info = await service.create_session("a")
    await eventually(lambda: info.id not in service._sessions, timeout=2.0)
    await eventually(lambda: service._pool.slots == 0)
    assert backend.sandboxes[0].closed
    with pytest.raises(SessionNotFound):
        await service.get_session("a", info.id)


async def test_use_refreshes_last_active(make_service: Factory) -> None:
    service = await make_service(session_idle_timeout=0.5, reaper_interval=0.05)
    info = await service.create_session("a")
    for _ in range(8):
        await asyncio.sleep(0.1)
        await service.execute("a", req(info.id, "pass"))
    after = await service.get_session("a", info.id)
    assert after.last_active_at > info.last_active_at
    assert after.expires_at == pytest.approx(after.last_active_at + 0.5)
    assert after.executions == 8


async def test_expired_session_is_not_found_before_the_reaper_runs(
    make_service: Factory, backend: FakeBackend
) -> None:
    service = await make_service(session_idle_timeout=0.1, reaper_interval=60)
    info = await service.create_session("a")
    await asyncio.sleep(0.15)
    with pytest.raises(SessionNotFound):
        await service.get_session("a", info.id)
    await eventually(lambda: backend.sandboxes[0].closed)


async def test_expired_sessions_free_capacity_for_new_ones(make_service: Factory) -> None:
    service = await make_service(
        max_sandboxes=1, session_idle_timeout=0.1, reaper_interval=60, acquire_timeout=0.05
    )
    await service.create_session("a")
    await asyncio.sleep(0.15)
    await service.create_session("b")


async def test_delete_session(make_service: Factory, backend: FakeBackend) -> None:
    service = await make_service()
    info = await service.create_session("a")
    await service.delete_session("a", info.id)
    assert backend.sandboxes[0].closed
    assert service._pool.slots == 0
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


async def test_timed_out_run_is_reported(make_service: Factory) -> None:
    service = await make_service()
    info = await service.create_session("a")
    result = await service.execute("a", req(info.id, "#fake: block", timeout=0.05))
    assert result.timed_out


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
    run = asyncio.create_task(service.execute("a", req(info.id, "#fake: sleep 0.1\nprint(1)")))
    await asyncio.sleep(0.03)
    assert (await service.get_session("a", info.id)).status == "busy"
    assert (await service.health()).busy == 1
    await run
    assert (await service.get_session("a", info.id)).status == "active"


async def test_executions_in_one_session_run_one_at_a_time(make_service: Factory) -> None:
    service = await make_service()
    info = await service.create_session("a")
    code = "#fake: sleep 0.1\nprint(1)"
    start = time.monotonic()
    await asyncio.gather(*(service.execute("a", req(info.id, code)) for _ in range(3)))
    assert time.monotonic() - start >= 0.3


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
    result = await asyncio.wait_for(service.execute("a", req(info.id, "print(2)")), 1.0)
    assert result.stdout == "2\n"


async def test_deleting_a_busy_session_stops_its_code(
    make_service: Factory, backend: FakeBackend
) -> None:
    service = await make_service()
    info = await service.create_session("a")
    run = asyncio.create_task(service.execute("a", req(info.id, "#fake: block", timeout=60)))
    await eventually(backend.sandboxes[0].running.is_set)
    await asyncio.wait_for(service.delete_session("a", info.id), 1.0)
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
    start = time.monotonic()
    await asyncio.wait_for(service.delete_session("a", info.id), 5)
    assert 2.5 < time.monotonic() - start < 4.5
    assert backend.sandboxes[0].closed
    assert service._pool.slots == 0
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
    assert service._sessions[info.id].sandbox is backend.sandboxes[1]
    assert service._pool.slots == 1
    later = await service.execute("a", req(info.id, "pass"))
    assert not later.state_lost


async def test_dead_sandbox_replaced_by_a_warm_one(
    make_service: Factory, backend: FakeBackend
) -> None:
    service = await make_service(pool_size=1)
    await eventually(lambda: service._pool.warm == 1)
    info = await service.create_session("a")
    await eventually(lambda: service._pool.warm == 1)
    sandbox = service._sessions[info.id].sandbox
    assert sandbox is not None
    backend.sandboxes[int(sandbox.id.split("-")[1])].kill()
    await service.execute("a", req(info.id, "pass"))
    await eventually(lambda: service._pool.warm == 1)
    assert service._pool.slots == 2


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
    assert service._pool.slots == 1


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
    service = ExecutorService(make_settings(pool_size=2), backend=backend)
    await service.start()
    await eventually(lambda: service._pool.warm == 2)
    info = await service.create_session("a")
    await service.create_session("b")
    run = asyncio.create_task(service.execute("a", req(info.id, "#fake: block", timeout=60)))
    await eventually(lambda: any(s.running.is_set() for s in backend.sandboxes))

    await asyncio.wait_for(service.aclose(), 2.0)

    with pytest.raises(SandboxUnavailable):
        await run
    assert backend.live == []
    assert backend.closed
    assert all(s.closes == 1 for s in backend.sandboxes)
    assert not list(backend.root.iterdir())
    assert service._reaper is not None and service._reaper.done()
    await service.aclose()


async def test_shutdown_cancels_sandbox_starts(backend: FakeBackend) -> None:
    backend.start_delay = 10
    service = ExecutorService(make_settings(pool_size=1), backend=backend)
    await service.start()
    creating = asyncio.create_task(service.create_session("a"))
    await asyncio.sleep(0.05)
    await asyncio.wait_for(service.aclose(), 1.0)
    with pytest.raises((SandboxUnavailable, asyncio.CancelledError)):
        await creating
    assert backend.sandboxes == []
