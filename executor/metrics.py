"""The execution service's metrics: executions by language and outcome, their duration, sandbox
starts and what ended sandboxes and sessions, and the pool's state read at scrape time.

Labels stay bounded (languages, outcomes, reasons): never a tenant or a session id.
"""

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from executor.backend import Sandbox, SandboxBackend
from executor.models import RunOutcome

EXECUTION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
START_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)


@dataclass(frozen=True)
class PoolState:
    """What the pool holds right now."""

    warm: int
    sandboxes: int
    capacity: int
    busy: int
    sessions: int
    waiting: int


class ExecutorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.executions = Counter(
            "codeproxy_executions",
            "Code executions by language and outcome (ok, error, timeout, oom).",
            ["language", "outcome"],
            registry=registry,
        )
        self.execution_duration = Histogram(
            "codeproxy_execution_duration_seconds",
            "How long code ran, as the sandbox measured it.",
            ["language"],
            buckets=EXECUTION_BUCKETS,
            registry=registry,
        )
        self.sandbox_events = Counter(
            "codeproxy_sandbox_events",
            "Sandboxes started, failed to start, restarted after dying or timing out, and "
            "killed for running out of memory.",
            ["event"],
            registry=registry,
        )
        self.sandbox_start = Histogram(
            "codeproxy_sandbox_start_duration_seconds",
            "Time to start a sandbox until its kernel answers.",
            buckets=START_BUCKETS,
            registry=registry,
        )
        self.sessions_ended = Counter(
            "codeproxy_sessions_ended",
            "Sessions ended, by reason: deleted, expired (idle), evicted (tenant at its limit).",
            ["reason"],
            registry=registry,
        )

    def watch_pool(self, state: Callable[[], PoolState]) -> None:
        self.registry.register(_PoolCollector(state))

    def record(self, language: str, outcome: RunOutcome) -> None:
        """Count one execution and what it did to its sandbox."""
        kind = "ok"
        if outcome.timed_out:
            kind = "timeout"
        elif is_oom(outcome):
            kind = "oom"
            self.sandbox_events.labels("oom_killed").inc()
        elif outcome.error is not None or outcome.exit_code:
            kind = "error"
        if outcome.state_lost:
            self.sandbox_events.labels("restarted").inc()
        self.executions.labels(language, kind).inc()
        self.execution_duration.labels(language).observe(outcome.duration_ms / 1000)


def is_oom(outcome: RunOutcome) -> bool:
    error = outcome.error
    return error is not None and error.name == "MemoryError" and "ran out of memory" in error.value


class MeasuredBackend:
    """A backend whose sandbox starts are timed and counted; everything else passes through."""

    def __init__(self, inner: SandboxBackend, metrics: ExecutorMetrics) -> None:
        self._inner = inner
        self._metrics = metrics
        self.name = inner.name

    async def start(self) -> None:
        await self._inner.start()

    async def create(self) -> Sandbox:
        started = time.perf_counter()
        try:
            sandbox = await self._inner.create()
        except Exception:
            self._metrics.sandbox_events.labels("start_failed").inc()
            raise
        self._metrics.sandbox_start.observe(time.perf_counter() - started)
        self._metrics.sandbox_events.labels("started").inc()
        return sandbox

    async def aclose(self) -> None:
        await self._inner.aclose()


class _PoolCollector(Collector):
    def __init__(self, state: Callable[[], PoolState]) -> None:
        self._state = state

    def collect(self) -> Iterable[Metric]:
        state = self._state()
        for name, value, doc in (
            ("warm", state.warm, "Warm sandboxes ready for a new session."),
            ("sandboxes", state.sandboxes, "Sandboxes held: warm, starting and leased."),
            ("capacity", state.capacity, "Most sandboxes this node holds at once."),
            ("busy", state.busy, "Sessions running code now."),
            ("sessions", state.sessions, "Live sessions."),
            ("waiting", state.waiting, "Session creations waiting for a sandbox."),
        ):
            yield GaugeMetricFamily(f"codeproxy_pool_{name}", doc, value=value)
