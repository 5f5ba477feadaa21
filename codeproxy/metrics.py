"""Prometheus metrics both services share: HTTP requests by route and status, their duration,
and for the API service the latency it adds (time not spent waiting for the upstream model or
the sandbox), plus an access log line per request.

Each app gets its own registry (tests build many apps in one process). With several worker
processes, `PROMETHEUS_MULTIPROC_DIR` is set by the CLI before the workers start, and
`/metrics` adds up every worker's values (prometheus-client's multiprocess mode).
"""

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Seconds: from well under a millisecond (added latency) to long code loops.
BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip

access_log = logging.getLogger("codeproxy.access")


@dataclass
class Waits:
    """Time one request spent waiting on others, by kind."""

    upstream: float = 0.0
    executor: float = 0.0


_waits: ContextVar[Waits | None] = ContextVar("waits", default=None)


@contextmanager
def waiting(kind: str) -> Iterator[None]:
    """Count the time inside as waiting on `kind` ("upstream" or "executor")."""
    started = time.perf_counter()
    try:
        yield
    finally:
        waits = _waits.get()
        if waits is not None:
            setattr(waits, kind, getattr(waits, kind) + time.perf_counter() - started)


class HttpMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "codeproxy_http_requests",
            "HTTP requests by route (the endpoint's name), method and status.",
            ["route", "method", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "codeproxy_http_request_duration_seconds",
            "Time from request to the end of the response, by route.",
            ["route", "method"],
            buckets=BUCKETS,
            registry=registry,
        )
        self.added = Histogram(
            "codeproxy_http_added_latency_seconds",
            "Time a request spent in this service itself: its duration less the time spent "
            "waiting for the upstream model and for the sandbox.",
            ["route"],
            buckets=BUCKETS,
            registry=registry,
        )


class MetricsMiddleware:
    """Times every HTTP request, counts it by endpoint (never the raw path, whose ids would
    make a series per request) and logs one access line without the query string (signed
    links carry their signature there)."""

    def __init__(self, app: ASGIApp, *, metrics: HttpMetrics, added_latency: bool) -> None:
        self.app = app
        self._metrics = metrics
        self._added = added_latency

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        waits = Waits()
        token = _waits.set(waits)
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            _waits.reset(token)
            elapsed = time.perf_counter() - started
            route = _route(scope)
            method = scope["method"]
            self._metrics.requests.labels(route, method, str(status)).inc()
            self._metrics.duration.labels(route, method).observe(elapsed)
            if self._added:
                own = max(elapsed - waits.upstream - waits.executor, 0.0)
                self._metrics.added.labels(route).observe(own)
            if access_log.isEnabledFor(logging.INFO):
                access_log.info("%s %s %d %.1fms", method, scope["path"], status, elapsed * 1000)


def _route(scope: Scope) -> str:
    """The name of the endpoint that served the request (`create_chat_completion`): the same
    with and without the /v1 prefix, and bounded, unlike paths with ids in them."""
    name = getattr(scope.get("endpoint"), "__name__", None)
    return name if isinstance(name, str) else "unmatched"


def render(registry: CollectorRegistry) -> Response:
    """The text exposition of `registry`, or of every worker's files in multiprocess mode."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
