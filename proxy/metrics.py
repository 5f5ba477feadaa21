"""The API service's own metrics, beside the HTTP ones of `codeproxy.metrics`: upstream calls
and their errors, blob store and database errors. Labels stay few and bounded: no tenant, no
session, no model name."""

from collections.abc import AsyncIterable, AsyncIterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from codeproxy.metrics import BUCKETS, HttpMetrics
from storage.blobs import BlobInfo, BlobStore


class ProxyMetrics(HttpMetrics):
    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(registry)
        self.registry = registry
        self.upstream_duration = Histogram(
            "codeproxy_upstream_request_duration_seconds",
            "Upstream model calls, until the whole answer (or stream) was read.",
            ["outcome"],
            buckets=BUCKETS,
            registry=registry,
        )
        self.upstream_errors = Counter(
            "codeproxy_upstream_errors",
            "Upstream model calls that failed: `status` 4xx/5xx, `unreachable` or `timeout`.",
            ["kind"],
            registry=registry,
        )
        self.blob_errors = Counter(
            "codeproxy_blob_errors",
            "Blob store operations that failed (a missing blob or a too large upload is no error).",
            ["operation"],
            registry=registry,
        )
        self.db_errors = Counter(
            "codeproxy_db_errors", "Database statements that failed.", registry=registry
        )

    def watch_database(self, engine: AsyncEngine) -> None:
        """Count every failed statement of `engine`."""
        event.listen(engine.sync_engine, "handle_error", lambda _context: self.db_errors.inc())


class CountedBlobStore:
    """A blob store whose failures are counted; everything else passes through."""

    def __init__(self, inner: BlobStore, errors: Counter) -> None:
        self._inner = inner
        self._errors = errors

    async def put(
        self, key: str, chunks: AsyncIterable[bytes], *, max_bytes: int | None = None
    ) -> BlobInfo:
        try:
            return await self._inner.put(key, chunks, max_bytes=max_bytes)
        except OSError:  # the store's own failures (BlobStoreError, disk errors)
            self._errors.labels("put").inc()
            raise

    async def open(self, key: str) -> AsyncIterator[bytes]:
        try:
            return await self._inner.open(key)
        except OSError:
            self._errors.labels("open").inc()
            raise

    async def delete(self, key: str) -> None:
        try:
            await self._inner.delete(key)
        except OSError:
            self._errors.labels("delete").inc()
            raise
