"""The local blob store: streaming, atomic, never partially visible."""

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from storage.blobs import BlobNotFound, BlobTooLarge, LocalBlobStore


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def read_all(store: LocalBlobStore, key: str) -> bytes:
    return b"".join([c async for c in await store.open(key)])


@pytest.fixture
def store(tmp_path: Path) -> LocalBlobStore:
    s = LocalBlobStore(tmp_path / "blobs")
    s.setup()
    return s


async def test_put_open_delete(store: LocalBlobStore) -> None:
    info = await store.put("file-abc123", chunks(b"hello ", b"world"))
    assert info.size == 11
    assert info.sha256 == "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
    assert await read_all(store, "file-abc123") == b"hello world"
    await store.delete("file-abc123")
    with pytest.raises(BlobNotFound):
        await store.open("file-abc123")
    await store.delete("file-abc123")  # deleting twice is fine


async def test_keys_cannot_name_paths(store: LocalBlobStore) -> None:
    for key in ("../../etc/passwd", "a/b", "", ".."):
        with pytest.raises(ValueError):
            await store.put(key, chunks(b"x"))


async def test_too_large_keeps_nothing(store: LocalBlobStore) -> None:
    with pytest.raises(BlobTooLarge):
        await store.put("file-big", chunks(b"x" * 600, b"x" * 600), max_bytes=1000)
    assert [p for p in store.root.rglob("*") if p.is_file()] == []


async def test_failure_mid_stream_keeps_nothing(store: LocalBlobStore) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b"partial data"
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await store.put("file-broken", broken())
    with pytest.raises(BlobNotFound):
        await store.open("file-broken")
    assert [p for p in store.root.rglob("*") if p.is_file()] == []


def test_crash_mid_write_never_exposes_a_partial_blob(tmp_path: Path) -> None:
    """A writer killed with SIGKILL mid-stream leaves no blob, and start-up sweeps its temp."""
    root = tmp_path / "blobs"
    script = textwrap.dedent(f"""
        import asyncio, sys
        from pathlib import Path
        from storage.blobs import LocalBlobStore

        async def slow():
            yield b"a" * 65536
            print("writing", flush=True)
            await asyncio.sleep(60)
            yield b"b"

        store = LocalBlobStore(Path({str(root)!r}))
        store.setup()
        asyncio.run(store.put("file-crash", slow()))
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=Path(__file__).parents[2]
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"writing\n"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    proc.stdout.close()
    store = LocalBlobStore(root)
    assert not store.path("file-crash").exists()
    assert len(list((root / "tmp").iterdir())) == 1  # the dead writer's temporary
    store.setup()
    assert list((root / "tmp").iterdir()) == []
    with pytest.raises(BlobNotFound):
        asyncio.run(store.open("file-crash"))
