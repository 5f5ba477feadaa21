"""The API service's own error counters, on a real database and a real blob store."""

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from proxy.metrics import CountedBlobStore, ProxyMetrics
from storage.blobs import BlobTooLarge, LocalBlobStore
from storage.db import create_engine


def count(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def test_failed_statements_are_counted(database_url: str) -> None:
    registry = CollectorRegistry()
    metrics = ProxyMetrics(registry)
    engine = create_engine(database_url)
    metrics.watch_database(engine)
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
            with pytest.raises(OperationalError):
                await conn.execute(text("SELECT * FROM no_such_table"))
    finally:
        await engine.dispose()
    assert count(registry, "codeproxy_db_errors_total") == 1


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_blob_store_failures_are_counted_but_not_refusals(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    metrics = ProxyMetrics(registry)
    local = LocalBlobStore(tmp_path / "blobs")
    local.setup()
    store = CountedBlobStore(local, metrics.blob_errors)
    with pytest.raises(BlobTooLarge):  # the caller's fault: not a store failure
        await store.put("file-big", chunks(b"x" * 10), max_bytes=5)
    (tmp_path / "blobs" / "tmp").rmdir()  # the store breaks: it cannot write anymore
    with pytest.raises(OSError):
        await store.put("file-1", chunks(b"x"))
    assert count(registry, "codeproxy_blob_errors_total", operation="put") == 1
