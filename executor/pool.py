"""The sandbox pool: warm sandboxes, and the capacity accounting for every sandbox held.

Every sandbox the service holds occupies one *slot*: warm sandboxes waiting in the pool,
sandboxes being started, and sandboxes leased to sessions. There are at most `max_sandboxes`
slots, and at most `max_per_tenant` leases per tenant. A session's lease owns its slot until it
is released, even while its sandbox is being replaced.

All accounting is synchronous (no await between a check and its update), so no lock is needed
on a single event loop; waiters are woken through a fresh `asyncio.Event` per change.
"""

import asyncio
import contextlib
import logging
import math
from collections import deque
from collections.abc import Coroutine
from typing import Any

from executor.backend import Sandbox, SandboxBackend
from executor.errors import CapacityExhausted, ExecutorError, SandboxUnavailable

logger = logging.getLogger(__name__)

# Refill retries after a failed start back off exponentially up to this many seconds.
_MAX_REFILL_BACKOFF = 30.0


class SandboxPool:
    """Hands out ready sandboxes quickly and never holds more than the configured maximum."""

    def __init__(
        self,
        backend: SandboxBackend,
        *,
        size: int,
        max_sandboxes: int,
        max_per_tenant: int,
        acquire_timeout: float,
        refill_backoff: float = 0.5,
    ) -> None:
        self._backend = backend
        self._size = min(size, max_sandboxes)
        self._max = max_sandboxes
        self._max_per_tenant = max_per_tenant
        self._acquire_timeout = acquire_timeout
        self._refill_backoff = refill_backoff

        self._warm: deque[Sandbox] = deque()
        self._slots = 0
        self._refilling = 0
        self._leases: dict[str, int] = {}
        self._changed = asyncio.Event()
        self._refill_needed = asyncio.Event()
        self._refill_task: asyncio.Task[None] | None = None
        # Sandbox starts and closes that must finish (or be cancelled) before shutdown returns.
        self._pending: set[asyncio.Task[None]] = set()
        self._creating: set[asyncio.Task[Sandbox]] = set()
        self._closing = False
        self.last_error: str | None = None

    @property
    def warm(self) -> int:
        return len(self._warm)

    @property
    def slots(self) -> int:
        return self._slots

    @property
    def max_sandboxes(self) -> int:
        return self._max

    def leases(self, tenant: str) -> int:
        return self._leases.get(tenant, 0)

    def at_capacity(self, tenant: str) -> bool:
        """True when `acquire(tenant)` could not be served without waiting."""
        if self.leases(tenant) >= self._max_per_tenant:
            return True
        return not self._warm and self._slots >= self._max

    async def start(self) -> None:
        """Start filling the pool in the background."""
        self._refill_task = asyncio.create_task(self._refill_loop(), name="sandbox-pool-refill")
        self._refill_needed.set()

    async def acquire(self, tenant: str) -> Sandbox:
        """Lease a sandbox to `tenant`: a warm one if any, else a freshly started one.

        Waits up to `acquire_timeout` for capacity, then raises CapacityExhausted.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._acquire_timeout
        while True:
            if self._closing:
                raise SandboxUnavailable("The executor is shutting down.")
            tenant_full = self.leases(tenant) >= self._max_per_tenant
            if not tenant_full:
                sandbox = self._take_warm()
                if sandbox is not None:
                    self._lease(tenant)
                    self._refill_needed.set()
                    return sandbox
                if self._slots < self._max:
                    self._slots += 1
                    self._lease(tenant)
                    break
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise self._exhausted(tenant_full)
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining)
        try:
            sandbox = await self._create()
        except BaseException:
            self._slots -= 1
            self._unlease(tenant)
            self._notify()
            raise
        self._refill_needed.set()
        return sandbox

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
            self._notify()
            self._refill_needed.set()
            return sandbox
        return await self._create()

    async def release(self, tenant: str, sandbox: Sandbox | None) -> None:
        """End a lease: close its sandbox (never reused: it holds a session's state)."""
        try:
            if sandbox is not None:
                await self._close_quietly(sandbox)
        finally:
            self._slots -= 1
            self._unlease(tenant)
            self._notify()
            self._refill_needed.set()

    def release_later(self, tenant: str, sandbox: Sandbox | None) -> None:
        """End a lease now and close its sandbox in the background.

        The tenant's share is free at once; the slot stays taken until the sandbox is closed,
        so the overall maximum still counts every sandbox that exists.
        """
        self._unlease(tenant)
        self._notify()
        self._spawn(self._discard_leased(sandbox))

    async def _discard_leased(self, sandbox: Sandbox | None) -> None:
        try:
            if sandbox is not None:
                await self._close_quietly(sandbox)
        finally:
            self._slots -= 1
            self._notify()
            self._refill_needed.set()

    async def aclose(self) -> None:
        """Stop refilling, cancel sandbox starts and close every warm sandbox."""
        self._closing = True
        self._notify()
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

    def _take_warm(self) -> Sandbox | None:
        while self._warm:
            sandbox = self._warm.popleft()
            if sandbox.alive:
                return sandbox
            # A warm sandbox that died is discarded; its slot is freed once it is cleaned up.
            logger.warning("discarding dead warm sandbox %s", sandbox.id)
            self._spawn(self._discard(sandbox))
        return None

    async def _discard(self, sandbox: Sandbox) -> None:
        try:
            await self._close_quietly(sandbox)
        finally:
            self._slots -= 1
            self._notify()
            self._refill_needed.set()

    async def _create(self) -> Sandbox:
        """Start a sandbox in a task that shutdown can cancel, translating backend failures."""
        task = asyncio.create_task(self._backend.create(), name="sandbox-create")
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

    async def _abandon(self, task: "asyncio.Task[Sandbox]") -> None:
        await asyncio.wait({task})
        if not task.cancelled() and task.exception() is None:
            await self._close_quietly(task.result())

    async def _refill_loop(self) -> None:
        backoff = self._refill_backoff
        while True:
            await self._refill_needed.wait()
            self._refill_needed.clear()
            while (
                not self._closing
                and len(self._warm) + self._refilling < self._size
                and self._slots < self._max
            ):
                self._slots += 1
                self._refilling += 1
                try:
                    sandbox = await self._create()
                except BaseException as exc:
                    self._slots -= 1
                    self._refilling -= 1
                    self._notify()
                    if not isinstance(exc, ExecutorError):
                        raise
                    logger.warning("refilling the sandbox pool failed; retrying in %.1fs", backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, _MAX_REFILL_BACKOFF)
                    continue
                self._refilling -= 1
                backoff = self._refill_backoff
                self._warm.append(sandbox)
                self._notify()

    def _exhausted(self, tenant_full: bool) -> CapacityExhausted:
        # Having waited acquire_timeout without capacity, a retry after about as long is fair.
        retry_after = float(max(1, math.ceil(self._acquire_timeout)))
        if tenant_full:
            message = (
                f"This tenant already holds its limit of {self._max_per_tenant} sandbox "
                "sessions. End a session or retry later."
            )
        else:
            message = f"All {self._max} sandboxes are in use. Retry later."
        return CapacityExhausted(message, retry_after=retry_after)

    def _lease(self, tenant: str) -> None:
        self._leases[tenant] = self._leases.get(tenant, 0) + 1

    def _unlease(self, tenant: str) -> None:
        left = self._leases.get(tenant, 0) - 1
        if left > 0:
            self._leases[tenant] = left
        else:
            self._leases.pop(tenant, None)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

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
