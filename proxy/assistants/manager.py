"""The runs this process drives, owned by the app's lifespan.

The manager starts a driver task per run (or stretch of a run after tool outputs), hands the
request that started it the run's stream when it asked for one, cancels runs, and every
`run_heartbeat_interval` seconds: records that its runs are alive, picks up cancellations
other processes stored for them, and ends the runs no process drives any more (see
`store.settle`). On shutdown its runs end as failed, saying why.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from proxy.assistants.driver import Feed, RunDriver
from proxy.assistants.store import settle
from proxy.deps import Services
from proxy.streaming import KEEPALIVE
from storage.assistants import abandoned_runs, beat
from storage.models import ThreadRun

logger = logging.getLogger(__name__)

DONE = b"event: done\ndata: [DONE]\n\n"
# A run is abandoned once its heartbeat has been silent for this many intervals.
SILENT_BEATS = 3
SHUTDOWN_GRACE = 10.0


class RunManager:
    def __init__(self, services: Services) -> None:
        self.services = services
        self._drivers: dict[str, RunDriver] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def interval(self) -> float:
        return self.services.settings.run_heartbeat_interval

    def silent_since(self, now: float) -> float:
        """Runs whose last heartbeat is older than this are abandoned."""
        return now - SILENT_BEATS * self.interval

    def drives(self, run_id: str) -> bool:
        return run_id in self._drivers

    async def start(self) -> None:
        self._sweeper = asyncio.create_task(self._beat_and_sweep(), name="assistants runs")

    async def stop(self) -> None:
        """Stop the sweep and every run (they end as failed: the service is shutting down)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        tasks = list(self._tasks.values())
        for run_id in list(self._drivers):
            self._stop(run_id, "shutdown")
        if tasks:
            await asyncio.wait(tasks, timeout=SHUTDOWN_GRACE)

    def launch(
        self, row: ThreadRun, *, tenant: str, initial: list[bytes], stream: bool
    ) -> AsyncIterator[bytes] | None:
        """Start driving `row`; with `stream`, the SSE body that follows it, beginning with
        the `initial` frames (what the request itself did: thread or run created, …)."""
        feed = Feed()
        queue = feed.subscribe() if stream else None
        feed.publish(initial)
        driver = RunDriver(self.services, row, tenant=tenant, feed=feed, stream=stream)
        task = asyncio.create_task(driver.drive(), name=f"run {row.id}")
        self._drivers[row.id] = driver
        self._tasks[row.id] = task
        task.add_done_callback(lambda _: self._forget(row.id))
        if queue is None:
            return None
        return self._follow(feed, queue)

    def _forget(self, run_id: str) -> None:
        self._drivers.pop(run_id, None)
        self._tasks.pop(run_id, None)

    def _stop(self, run_id: str, reason: str) -> None:
        driver = self._drivers[run_id]
        driver.stop_reason = driver.stop_reason or reason
        if driver.started:
            self._tasks[run_id].cancel()
        # A driver not started yet sees `stop_reason` as soon as it starts.

    async def cancel(self, run_id: str, *, wait: float) -> bool:
        """Cancel a run this process drives and wait up to `wait` seconds for it to end;
        False if it does not drive it."""
        task = self._tasks.get(run_id)
        if task is None:
            return False
        self._stop(run_id, "cancel")
        await asyncio.wait({task}, timeout=wait)
        return True

    async def _follow(
        self, feed: Feed, queue: "asyncio.Queue[list[bytes] | None]"
    ) -> AsyncIterator[bytes]:
        """The run's frames as they come, keepalives while nothing does, then `done`. A client
        that goes away leaves the run running."""
        keepalive = self.services.settings.keepalive_interval
        try:
            while True:
                try:
                    frames = await asyncio.wait_for(queue.get(), keepalive)
                except TimeoutError:
                    yield KEEPALIVE
                    continue
                if frames is None:
                    break
                for frame in frames:
                    yield frame
            yield DONE
        finally:
            feed.unsubscribe(queue)

    async def _beat_and_sweep(self) -> None:
        while True:
            try:
                await self._beat()
                await self._sweep()
            except Exception:
                logger.exception("the heartbeat of assistants runs failed; retrying")
            await asyncio.sleep(self.interval)

    async def _beat(self) -> None:
        async with self.services.db() as db:
            cancelled = await beat(db, run_ids=list(self._drivers), now=time.time())
        for run_id in cancelled:  # another process stored a cancellation
            if run_id in self._drivers:
                self._stop(run_id, "cancel")

    async def _sweep(self) -> None:
        now = time.time()
        async with self.services.db() as db:
            for row in await abandoned_runs(db, silent_since=self.silent_since(now)):
                await settle(
                    db,
                    row,
                    now=now,
                    silent_since=self.silent_since(now),
                    local=self.drives(row.id),
                )
