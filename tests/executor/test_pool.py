"""SandboxPool on its own, against the fake backend: warm sandboxes, slots, quotas, the line of
waiters, eviction through its callback, timeouts, cancellation and shutdown."""

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from executor.backend import Sandbox
from executor.errors import CapacityExhausted, QuotaExceeded, SandboxUnavailable
from executor.pool import Claim, Quota, SandboxPool
from tests.executor.conftest import HANG, eventually
from tests.executor.fakes import FakeBackend, FakeSandbox

A = Claim("a")
B = Claim("b")


class Idle:
    """What the pool's owner does when asked to evict: it holds idle leases, and gives back
    the oldest one that counts against the full quota."""

    def __init__(self) -> None:
        self.pool: SandboxPool | None = None
        self.leases: list[tuple[Claim, Sandbox]] = []
        self.asked: list[tuple[Claim, Quota]] = []

    def __call__(self, claim: Claim, quota: Quota) -> bool:
        self.asked.append((claim, quota))
        for held in self.leases:
            owner = held[0]
            if (
                quota is Quota.SERVICE
                or (quota is Quota.TENANT and owner.tenant == claim.tenant)
                or owner == claim
            ):
                self.leases.remove(held)
                assert self.pool is not None
                self.pool.release_later(*held)
                return True
        return False


@pytest.fixture
def backend(tmp_path: Path) -> FakeBackend:
    return FakeBackend(tmp_path / "sandboxes")


@pytest.fixture
def idle() -> Idle:
    return Idle()


@pytest.fixture
async def make_pool(backend: FakeBackend, idle: Idle) -> AsyncIterator[Callable[..., Any]]:
    pools: list[SandboxPool] = []

    async def make(**overrides: Any) -> SandboxPool:
        options: dict[str, Any] = {
            "size": 0,
            "max_sandboxes": 4,
            "max_per_tenant": 4,
            "max_per_user": 4,
            "acquire_timeout": HANG,
            "evict": idle,
            "refill_backoff": 0.01,
        }
        options.update(overrides)
        pool = SandboxPool(backend, **options)
        idle.pool = pool
        await pool.start()
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        await pool.aclose()


def waiting(pool: SandboxPool, n: int) -> Callable[[], bool]:
    return lambda: pool.waiting == n


# Warm sandboxes and slots


async def test_a_warm_sandbox_is_handed_out_and_replaced(
    make_pool: Callable[..., Any], backend: FakeBackend
) -> None:
    pool: SandboxPool = await make_pool(size=2)
    await eventually(lambda: pool.warm == 2)
    sandbox = await pool.acquire(A)
    assert sandbox is backend.sandboxes[0]
    assert pool.leases("a") == 1
    await eventually(lambda: pool.warm == 2)
    assert pool.slots == 3


async def test_without_warm_sandboxes_one_is_started(
    make_pool: Callable[..., Any], backend: FakeBackend
) -> None:
    pool: SandboxPool = await make_pool(size=0)
    sandbox = await pool.acquire(A)
    assert backend.sandboxes == [sandbox]
    assert (pool.slots, pool.warm) == (1, 0)


async def test_release_closes_the_sandbox_and_frees_slot_and_quota(
    make_pool: Callable[..., Any],
) -> None:
    pool: SandboxPool = await make_pool()
    sandbox = await pool.acquire(Claim("a", "u"))
    assert (pool.leases("a"), pool.leases("a", "u")) == (1, 1)
    await pool.release(Claim("a", "u"), sandbox)
    assert isinstance(sandbox, FakeSandbox) and sandbox.closed
    assert (pool.slots, pool.leases("a"), pool.leases("a", "u")) == (0, 0, 0)


async def test_release_later_frees_the_quota_at_once_and_the_slot_once_closed(
    make_pool: Callable[..., Any],
) -> None:
    pool: SandboxPool = await make_pool()
    sandbox = await pool.acquire(A)
    pool.release_later(A, sandbox)
    assert pool.leases("a") == 0
    assert pool.slots == 1  # the sandbox still exists until it is closed
    await eventually(lambda: pool.slots == 0)
    assert isinstance(sandbox, FakeSandbox) and sandbox.closed


async def test_the_warm_pool_never_grows_past_the_maximum(
    make_pool: Callable[..., Any], backend: FakeBackend
) -> None:
    pool: SandboxPool = await make_pool(size=4, max_sandboxes=2)
    await eventually(lambda: pool.warm == 2)
    await pool.acquire(A)
    await pool.acquire(B)
    await asyncio.sleep(0.05)
    assert (pool.slots, pool.warm, len(backend.sandboxes)) == (2, 0, 2)


async def test_a_dead_warm_sandbox_is_skipped_and_closed(
    make_pool: Callable[..., Any], backend: FakeBackend
) -> None:
    pool: SandboxPool = await make_pool(size=1)
    await eventually(lambda: pool.warm == 1)
    backend.sandboxes[0].kill()
    sandbox = await pool.acquire(A)
    assert sandbox is not backend.sandboxes[0]
    await eventually(lambda: backend.sandboxes[0].closed)


async def test_a_failed_start_frees_its_slot_and_is_reported(
    make_pool: Callable[..., Any], backend: FakeBackend
) -> None:
    pool: SandboxPool = await make_pool()
    backend.fail_creates = 1
    with pytest.raises(SandboxUnavailable):
        await pool.acquire(A)
    assert (pool.slots, pool.leases("a")) == (0, 0)
    assert pool.last_error is not None and "fake sandbox start failed" in pool.last_error
    await pool.acquire(A)
    assert pool.last_error is None


async def test_a_failed_refill_is_retried(
    make_pool: Callable[..., Any], backend: FakeBackend
) -> None:
    backend.fail_creates = 2
    pool: SandboxPool = await make_pool(size=1)
    await eventually(lambda: pool.warm == 1)
    assert pool.slots == 1 and pool.last_error is None


async def test_renew_replaces_a_dead_sandbox_within_its_slot(
    make_pool: Callable[..., Any], backend: FakeBackend
) -> None:
    pool: SandboxPool = await make_pool(size=1)
    await eventually(lambda: pool.warm == 1)
    leased = await pool.acquire(A)
    await eventually(lambda: pool.warm == 1)
    assert isinstance(leased, FakeSandbox)
    leased.kill()
    replacement = await pool.renew(leased)
    assert leased.closed and replacement is not leased
    # The warm sandbox brought its own slot: the lease's is free again, and refilled.
    await eventually(lambda: pool.warm == 1)
    assert pool.slots == 2 and pool.leases("a") == 1


# Waiting in line


async def test_a_waiter_for_capacity_is_served_by_a_release(make_pool: Callable[..., Any]) -> None:
    pool: SandboxPool = await make_pool(max_sandboxes=1)
    held = await pool.acquire(A)
    waiter = asyncio.create_task(pool.acquire(B))
    await eventually(waiting(pool, 1))
    await pool.release(A, held)
    assert isinstance(await waiter, FakeSandbox)
    assert (pool.waiting, pool.leases("b")) == (0, 1)


async def test_waiters_are_served_in_order(make_pool: Callable[..., Any]) -> None:
    pool: SandboxPool = await make_pool(max_sandboxes=1)
    held = await pool.acquire(A)
    served: list[str] = []

    async def wait(name: str) -> None:
        sandbox = await pool.acquire(Claim(name))
        served.append(name)
        await pool.release(Claim(name), sandbox)

    tasks = []
    for n, name in enumerate(("first", "second", "third"), start=1):
        tasks.append(asyncio.create_task(wait(name)))
        await eventually(waiting(pool, n))
    await pool.release(A, held)
    await asyncio.gather(*tasks)
    assert served == ["first", "second", "third"]


async def test_a_waiter_blocked_by_its_own_quota_does_not_hold_up_others(
    make_pool: Callable[..., Any],
) -> None:
    pool: SandboxPool = await make_pool(max_per_tenant=1)
    await pool.acquire(A)
    blocked = asyncio.create_task(pool.acquire(A))
    await eventually(waiting(pool, 1))
    await pool.acquire(B)  # served at once, past the blocked waiter
    assert not blocked.done()
    blocked.cancel()
    with pytest.raises(asyncio.CancelledError):
        await blocked
    assert pool.waiting == 0


async def test_a_waiter_evicts_the_idle_lease_of_its_quota(
    make_pool: Callable[..., Any], idle: Idle
) -> None:
    pool: SandboxPool = await make_pool(max_per_tenant=1, max_per_user=1)
    mine = Claim("a", "u")
    idle.leases.append((B, await pool.acquire(B)))
    idle.leases.append((mine, await pool.acquire(mine)))
    await pool.acquire(mine)
    # Asked for the user's own quota, the owner gave up the user's lease, not b's older one.
    assert idle.asked == [(mine, Quota.USER)]
    assert [claim for claim, _ in idle.leases] == [B]
    assert (pool.leases("a", "u"), pool.leases("b")) == (1, 1)


async def test_a_waiter_is_served_once_its_owner_has_something_to_evict(
    make_pool: Callable[..., Any], idle: Idle
) -> None:
    pool: SandboxPool = await make_pool(max_per_tenant=1)
    busy = await pool.acquire(A)
    waiter = asyncio.create_task(pool.acquire(A))
    await eventually(waiting(pool, 1))
    assert idle.asked[-1] == (A, Quota.TENANT)
    # The lease goes idle: the owner says so with wake(), and the waiter takes it over.
    idle.leases.append((A, busy))
    pool.wake()
    assert isinstance(await waiter, FakeSandbox)
    await eventually(lambda: isinstance(busy, FakeSandbox) and busy.closed)


async def test_a_full_service_evicts_only_as_many_as_waiters_need(
    make_pool: Callable[..., Any], idle: Idle
) -> None:
    pool: SandboxPool = await make_pool(max_sandboxes=3)
    for claim in (A, B, Claim("c")):
        idle.leases.append((claim, await pool.acquire(claim)))
    await pool.acquire(Claim("d"))
    # One sandbox was closed to make room, the oldest; the others stay.
    assert [claim for claim, _ in idle.leases] == [B, Claim("c")]
    assert pool.slots == 3


async def test_time_out_for_a_quota_is_429(make_pool: Callable[..., Any]) -> None:
    pool: SandboxPool = await make_pool(max_per_tenant=1, max_per_user=1, acquire_timeout=0.05)
    await pool.acquire(Claim("a", "u"))
    with pytest.raises(QuotaExceeded) as user:
        await pool.acquire(Claim("a", "u"))
    assert "end user" in user.value.message
    with pytest.raises(QuotaExceeded) as tenant:
        await pool.acquire(Claim("a", "v"))
    assert "tenant" in tenant.value.message
    assert tenant.value.status == 429 and tenant.value.retry_after == 1
    assert pool.waiting == 0


async def test_time_out_for_capacity_is_503(make_pool: Callable[..., Any]) -> None:
    pool: SandboxPool = await make_pool(max_sandboxes=1, acquire_timeout=0.05)
    await pool.acquire(A)
    with pytest.raises(CapacityExhausted) as caught:
        await pool.acquire(B)
    assert caught.value.status == 503 and caught.value.retry_after == 1
    assert pool.waiting == 0


async def test_a_zero_timeout_serves_what_is_free_and_refuses_the_rest(
    make_pool: Callable[..., Any],
) -> None:
    pool: SandboxPool = await make_pool(max_sandboxes=1, acquire_timeout=0)
    await pool.acquire(A)
    with pytest.raises(CapacityExhausted):
        await pool.acquire(B)


async def test_a_cancelled_waiter_leaves_the_line(make_pool: Callable[..., Any]) -> None:
    pool: SandboxPool = await make_pool(max_sandboxes=1)
    held = await pool.acquire(A)
    gone = asyncio.create_task(pool.acquire(B))
    await eventually(waiting(pool, 1))
    after = asyncio.create_task(pool.acquire(Claim("c")))
    await eventually(waiting(pool, 2))
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    await pool.release(A, held)
    await after
    assert (pool.leases("b"), pool.leases("c"), pool.slots) == (0, 1, 1)


async def test_cancelling_a_start_frees_its_slot(
    make_pool: Callable[..., Any], backend: FakeBackend
) -> None:
    backend.start_delay = 60
    pool: SandboxPool = await make_pool()
    starting = asyncio.create_task(pool.acquire(A))
    await eventually(lambda: pool.slots == 1)
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting
    assert (pool.slots, pool.leases("a")) == (0, 0)


async def test_refill_leaves_free_slots_to_waiters(
    make_pool: Callable[..., Any], backend: FakeBackend, idle: Idle
) -> None:
    pool: SandboxPool = await make_pool(size=1, max_sandboxes=1)
    await eventually(lambda: pool.warm == 1)
    held = await pool.acquire(A)
    waiter = asyncio.create_task(pool.acquire(B))
    await eventually(waiting(pool, 1))
    await pool.release(A, held)
    # The freed slot went to the waiter, not to a new warm sandbox.
    assert isinstance(await waiter, FakeSandbox)
    assert (pool.slots, pool.warm) == (1, 0)


# Shutdown


async def test_shutdown_fails_waiters_and_closes_warm_sandboxes(
    backend: FakeBackend, idle: Idle
) -> None:
    pool = SandboxPool(
        backend, size=1, max_sandboxes=2, max_per_tenant=1, max_per_user=1, acquire_timeout=HANG
    )
    await pool.start()
    await eventually(lambda: pool.warm == 1)
    await pool.acquire(A)
    await eventually(lambda: pool.warm == 1)
    waiter = asyncio.create_task(pool.acquire(A))
    await eventually(waiting(pool, 1))
    await pool.aclose()
    with pytest.raises(SandboxUnavailable):
        await waiter
    with pytest.raises(SandboxUnavailable):
        await pool.acquire(B)
    # The leased sandbox is its owner's to release; the warm one is closed.
    assert [s.closed for s in backend.sandboxes] == [False, True]
    assert pool.warm == 0
