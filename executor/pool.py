"""The sandbox pool: warm sandboxes, and the capacity accounting for every sandbox held.

Every sandbox the service holds occupies one *slot*: warm sandboxes waiting in the pool,
sandboxes being started, sandboxes leased to sessions, and sandboxes being closed. There are at
most `max_sandboxes` slots. Leases are also counted per tenant (at most `max_per_tenant`) and,
when the tenant's app names its end user, per end user (at most `max_per_user`).

A request that cannot be served at once waits in a FIFO queue. Whenever something changes, the
queue is served in order: a waiter whose own quota is full takes over (evicts) the least
recently used idle session within that quota; a waiter that finds every slot taken evicts the
least recently used idle session of anyone. Which session that is, is the caller's business
(the `evict` callback); the pool only counts. A waiter that is still blocked when its time is
up fails with QuotaExceeded (its own quota: 429) or CapacityExhausted (the service's: 503).

All accounting is synchronous (no await between a check and its update), so no lock is needed
on a single event loop.
"""

import asyncio
import contextlib
import enum
import logging
import math
from collections import Counter, deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from executor.backend import Sandbox, SandboxBackend
from executor.errors import CapacityExhausted, ExecutorError, QuotaExceeded, SandboxUnavailable

logger = logging.getLogger(__name__)

# Refill retries after a failed start back off exponentially up to this many seconds.
_MAX_REFILL_BACKOFF = 30.0


@dataclass(frozen=True, slots=True)
class Claim:
    """Whom a lease counts against: a tenant, and the end user of its app when it names one."""

    tenant: str
    user: str | None = None


class Quota(enum.Enum):
    """The limit that keeps a waiter waiting."""

    USER = "user"
    TENANT = "tenant"
    SERVICE = "service"


# Ends the least recently used idle session counted in `quota` of the claim (any session at
# all for SERVICE) and gives its lease back with `release_later`; False if there is none.
Evict = Callable[[Claim, Quota], bool]


@dataclass(eq=False)
class _Waiter:
    claim: Claim
    # Resolved with a warm sandbox, or with None: a slot to start a sandbox in.
    grant: "asyncio.Future[Sandbox | None]"
    blocked: Quota | None = None


def _never_evict(_claim: Claim, _quota: Quota) -> bool:
    return False


class SandboxPool:
    """Hands out ready sandboxes quickly and never holds more than the configured maximum."""

    def __init__(
        self,
        backend: SandboxBackend,
        *,
        size: int,
        max_sandboxes: int,
        max_per_tenant: int,
        max_per_user: int,
        acquire_timeout: float,
        max_starting: int = 2,
        evict: Evict = _never_evict,
        refill_backoff: float = 0.5,
    ) -> None:
        self._backend = backend
        self._size = min(size, max_sandboxes)
        self._max = max_sandboxes
        self._max_per_tenant = max_per_tenant
        self._max_per_user = max_per_user
        self._acquire_timeout = acquire_timeout
        self._evict = evict
        self._refill_backoff = refill_backoff

        self._warm: deque[Sandbox] = deque()
        self._slots = 0
        self._refilling = 0
        # Slots of sandboxes being closed: free soon, so a waiter counts on them.
        self._freeing = 0
        self._tenant_leases: Counter[str] = Counter()
        self._user_leases: Counter[tuple[str, str]] = Counter()
        self._waiters: deque[_Waiter] = deque()
        self._serving = False
        self._serve_again = False
        # Starting a sandbox is CPU-bound: a few at a time finish sooner than many at once.
        self._starts = asyncio.Semaphore(max_starting)
        self._refill_needed = asyncio.Event()
        self._refill_task: asyncio.Task[None] | None = None
        # Sandbox starts and closes that must finish (or be cancelled) before shutdown returns.
        self._pending: set[asyncio.Task[None]] = set()
        self._creating: set[asyncio.Task[Sandbox]] = set()
        self._closing = False
        self.last_error: str | None = None

    @property
    def warm(self) -> int:
        """Started sandboxes waiting to be leased."""
        return len(self._warm)

    @property
    def slots(self) -> int:
        """Sandboxes that exist or are being started or closed."""
        return self._slots

    @property
    def max_sandboxes(self) -> int:
        return self._max

    @property
    def waiting(self) -> int:
        """Requests waiting for a sandbox."""
        return len(self._waiters)

    def leases(self, tenant: str, user: str | None = None) -> int:
        """Leases held by a tenant, or by one end user of it."""
        if user is None:
            return self._tenant_leases[tenant]
        return self._user_leases[(tenant, user)]

    async def start(self) -> None:
        """Start filling the pool in the background."""
        self._refill_task = asyncio.create_task(self._refill_loop(), name="sandbox-pool-refill")
        self._refill_needed.set()

    async def acquire(self, claim: Claim) -> Sandbox:
        """Lease a sandbox: a warm one if any, else a freshly started one.

        Waits up to `acquire_timeout` in line; then raises QuotaExceeded if the claim's own
        quota kept it waiting, CapacityExhausted if the service's did.
        """
        if self._closing:
            raise SandboxUnavailable("The executor is shutting down.")
        waiter = _Waiter(claim, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        self._serve()
        try:
            async with asyncio.timeout(self._acquire_timeout):
                sandbox = await waiter.grant
        except TimeoutError:
            if not _granted(waiter.grant):
                self._withdraw(waiter)
                raise self._exhausted(waiter.blocked) from None
            # Granted in the very moment the time ran out: take it.
            sandbox = waiter.grant.result()
        except BaseException:
            self._withdraw(waiter)
            raise
        self._refill_needed.set()
        if sandbox is not None:
            return sandbox
        try:
            sandbox = await self._create()
        except BaseException:
            self._slots -= 1
            self._unlease(claim)
            self._serve()
            raise
        return sandbox

    def wake(self) -> None:
        """Let waiters look again: something the pool does not see changed (a session went
        idle and may be taken over)."""
        self._serve()

    async def renew(self, dead: Sandbox | None) -> Sandbox:
        """Replace a leased sandbox that died; the lease keeps its slot either way.

        The dead sandbox is closed first. If no replacement can be started, SandboxUnavailable
        is raised and the lease holds an empty slot; call `renew(None)` to try again.
        """
        if dead is not None:
            await self._close_quietly(dead)
        sandbox = self._take_warm()
        if sandbox is not None:
            # The warm sandbox brought its own slot; the lease's slot is free now.
            self._slots -= 1
            self._serve()
            self._refill_needed.set()
            return sandbox
        return await self._create()

    async def release(self, claim: Claim, sandbox: Sandbox | None) -> None:
        """End a lease: close its sandbox (never reused: it holds a session's state)."""
        try:
            if sandbox is not None:
                await self._close_quietly(sandbox)
        finally:
            self._slots -= 1
            self._unlease(claim)
            self._serve()
            self._refill_needed.set()

    def release_later(self, claim: Claim, sandbox: Sandbox | None) -> None:
        """End a lease now and close its sandbox in the background.

        The claim's quota is free at once; the slot stays taken until the sandbox is closed,
        so the overall maximum still counts every sandbox that exists.
        """
        self._unlease(claim)
        self._freeing += 1
        self._spawn(self._discard(sandbox))
        self._serve()

    async def aclose(self) -> None:
        """Stop refilling, fail waiters, cancel sandbox starts and close every warm sandbox."""
        self._closing = True
        for waiter in self._waiters:
            if not waiter.grant.done():
                waiter.grant.set_exception(SandboxUnavailable("The executor is shutting down."))
        self._waiters.clear()
        tasks: list[asyncio.Task[None]] = []
        if self._refill_task is not None:
            self._refill_task.cancel()
            tasks.append(self._refill_task)
        for creating in self._creating:
            creating.cancel()
        await asyncio.gather(*tasks, *self._creating, return_exceptions=True)
        warm = list(self._warm)
        self._warm.clear()
        self._slots -= len(warm)
        await asyncio.gather(*(self._close_quietly(s) for s in warm))
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    def _serve(self) -> None:
        """Serve the waiters in order; re-entrant calls (an eviction frees a lease, which
        calls back here) make the running pass go round once more."""
        if self._serving:
            self._serve_again = True
            return
        self._serving = True
        try:
            self._serve_again = True
            while self._serve_again and not self._closing:
                self._serve_again = False
                self._serve_once()
        finally:
            self._serving = False
        if self._waiters_for_capacity() == 0:
            self._refill_needed.set()

    def _serve_once(self) -> None:
        # Slots being freed that earlier waiters of this pass already count on.
        counted = 0
        for waiter in list(self._waiters):
            if waiter.grant.done():  # gave up, or failed by shutdown
                self._waiters.remove(waiter)
                continue
            quota = self._quota_full(waiter.claim)
            if quota is not None and self._evict(waiter.claim, quota):
                quota = self._quota_full(waiter.claim)
            if quota is not None:
                waiter.blocked = quota
                continue
            sandbox = self._take_warm()
            if sandbox is None:
                if self._slots >= self._max:
                    waiter.blocked = Quota.SERVICE
                    if self._freeing > counted or self._evict(waiter.claim, Quota.SERVICE):
                        counted += 1
                    continue
                self._slots += 1
            self._waiters.remove(waiter)
            self._lease(waiter.claim)
            waiter.grant.set_result(sandbox)

    def _quota_full(self, claim: Claim) -> Quota | None:
        if claim.user is not None and self.leases(claim.tenant, claim.user) >= self._max_per_user:
            return Quota.USER
        if self.leases(claim.tenant) >= self._max_per_tenant:
            return Quota.TENANT
        return None

    def _waiters_for_capacity(self) -> int:
        return sum(1 for w in self._waiters if w.blocked is Quota.SERVICE)

    def _withdraw(self, waiter: _Waiter) -> None:
        """Take a waiter that gave up out of line, handing back anything it was granted."""
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)
        if not _granted(waiter.grant):
            waiter.grant.cancel()
            return
        sandbox = waiter.grant.result()
        self._unlease(waiter.claim)
        if sandbox is None:
            self._slots -= 1
        elif self._closing:
            self._freeing += 1
            self._spawn(self._discard(sandbox))
        else:
            self._warm.appendleft(sandbox)
        self._serve()

    def _take_warm(self) -> Sandbox | None:
        while self._warm:
            sandbox = self._warm.popleft()
            if sandbox.alive:
                return sandbox
            # A warm sandbox that died is discarded; its slot is freed once it is cleaned up.
            logger.warning("discarding dead warm sandbox %s", sandbox.id)
            self._freeing += 1
            self._spawn(self._discard(sandbox))
        return None

    async def _discard(self, sandbox: Sandbox | None) -> None:
        try:
            if sandbox is not None:
                await self._close_quietly(sandbox)
        finally:
            self._freeing -= 1
            self._slots -= 1
            self._serve()
            self._refill_needed.set()

    async def _create(self) -> Sandbox:
        """Start a sandbox in a task that shutdown can cancel, translating backend failures."""
        task = asyncio.create_task(self._start_one(), name="sandbox-create")
        self._creating.add(task)
        task.add_done_callback(self._creating.discard)
        try:
            sandbox = await asyncio.shield(task)
        except asyncio.CancelledError:
            # Our caller gave up: stop the start, and close the sandbox if it made it anyway.
            task.cancel()
            self._spawn(self._abandon(task))
            raise
        except ExecutorError as exc:
            self.last_error = exc.message
            raise
        except Exception as exc:
            logger.exception("starting a sandbox failed")
            self.last_error = f"{type(exc).__name__}: {exc}"
            raise SandboxUnavailable("Could not start a sandbox.") from exc
        self.last_error = None
        if self._closing:
            await self._close_quietly(sandbox)
            raise SandboxUnavailable("The executor is shutting down.")
        return sandbox

    async def _start_one(self) -> Sandbox:
        async with self._starts:
            return await self._backend.create()

    async def _abandon(self, task: "asyncio.Task[Sandbox]") -> None:
        await asyncio.wait({task})
        if not task.cancelled() and task.exception() is None:
            await self._close_quietly(task.result())

    async def _refill_loop(self) -> None:
        backoff = self._refill_backoff
        while True:
            await self._refill_needed.wait()
            self._refill_needed.clear()
            # Slots that waiters for capacity need are theirs, not the warm pool's.
            while (
                not self._closing
                and len(self._warm) + self._refilling < self._size
                and self._slots + self._waiters_for_capacity() < self._max
            ):
                self._slots += 1
                self._refilling += 1
                try:
                    sandbox = await self._create()
                except BaseException as exc:
                    self._slots -= 1
                    self._refilling -= 1
                    self._serve()
                    if not isinstance(exc, ExecutorError):
                        raise
                    logger.warning("refilling the sandbox pool failed; retrying in %.1fs", backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, _MAX_REFILL_BACKOFF)
                    continue
                self._refilling -= 1
                backoff = self._refill_backoff
                self._warm.append(sandbox)
                self._serve()

    def _exhausted(self, blocked: Quota | None) -> ExecutorError:
        # Having waited acquire_timeout in vain, a retry after about as long is fair.
        retry_after = float(max(1, math.ceil(self._acquire_timeout)))
        if blocked is Quota.USER:
            return QuotaExceeded(
                f"This end user already holds the limit of {self._max_per_user} sandbox "
                "sessions, and none of them is idle. Retry later.",
                retry_after=retry_after,
            )
        if blocked is Quota.TENANT:
            return QuotaExceeded(
                f"This tenant already holds its limit of {self._max_per_tenant} sandbox "
                "sessions, and none of them is idle. End a session or retry later.",
                retry_after=retry_after,
            )
        return CapacityExhausted(
            f"All {self._max} sandboxes are in use. Retry later.", retry_after=retry_after
        )

    def _lease(self, claim: Claim) -> None:
        self._tenant_leases[claim.tenant] += 1
        if claim.user is not None:
            self._user_leases[(claim.tenant, claim.user)] += 1

    def _unlease(self, claim: Claim) -> None:
        _decrement(self._tenant_leases, claim.tenant)
        if claim.user is not None:
            _decrement(self._user_leases, (claim.tenant, claim.user))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    @staticmethod
    async def _close_quietly(sandbox: Sandbox) -> None:
        try:
            await sandbox.close()
        except Exception:
            logger.exception("closing sandbox %s failed", sandbox.id)


def _granted(grant: "asyncio.Future[Sandbox | None]") -> bool:
    return grant.done() and not grant.cancelled() and grant.exception() is None


K = TypeVar("K")


def _decrement(counter: Counter[K], key: K) -> None:
    # Keys at zero are dropped, so the counters hold only the tenants that lease something.
    if counter[key] <= 1:
        del counter[key]
    else:
        counter[key] -= 1
