"""File bytes: a small blob store interface and its local-disk implementation.

Blobs are written to a temporary name, fsynced and renamed into place, so a blob is either
fully there or not at all, even if the process dies mid-write. Paths derive from blob keys
(generated IDs), never from user-supplied file names.
"""

import asyncio
import hashlib
import os
import re
import secrets
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

CHUNK = 256 * 1024
_KEY = re.compile(r"^[A-Za-z0-9_-]{4,128}$")


class BlobNotFound(KeyError):
    """No blob under that key."""


class BlobTooLarge(ValueError):
    """The stream exceeded `max_bytes`; nothing was kept."""


class BlobStoreError(OSError):
    """The store itself failed (unreachable, refused, misconfigured); nothing was kept."""


@dataclass(frozen=True)
class BlobInfo:
    size: int
    sha256: str


class BlobStore(Protocol):
    async def put(
        self, key: str, chunks: AsyncIterable[bytes], *, max_bytes: int | None = None
    ) -> BlobInfo:
        """Store a stream under `key` atomically; raises BlobTooLarge past `max_bytes`."""
        ...

    async def open(self, key: str) -> AsyncIterator[bytes]:
        """Stream a blob; raises BlobNotFound before returning if it is missing."""
        ...

    async def delete(self, key: str) -> None:
        """Remove a blob; a missing blob is not an error."""
        ...


def check_key(key: str) -> None:
    """Keys are generated ids; anything else (a path, say) is a bug, refused loudly."""
    if not _KEY.match(key):
        raise ValueError(f"invalid blob key {key!r}")


def open_blob_store(url: str, *, s3_endpoint_url: str | None = None) -> BlobStore:
    """The store `url` names: `file:///path` (local disk) or `s3://bucket/prefix`."""
    parsed = urlsplit(url)
    if parsed.scheme == "file":
        local = LocalBlobStore(Path(unquote(parsed.netloc + parsed.path)))
        local.setup()
        return local
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"CODEPROXY_BLOB_URL {url!r} names no bucket: s3://bucket/prefix")
        from storage.s3blobs import S3BlobStore

        return S3BlobStore.from_url(url, endpoint_url=s3_endpoint_url)
    raise ValueError(f"CODEPROXY_BLOB_URL {url!r} is neither file://… nor s3://bucket/prefix")


class LocalBlobStore:
    """Blobs as files under `root/<two chars>/<key>`; temporaries under `root/tmp`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = root / "tmp"

    def setup(self) -> None:
        """Create the folders and remove temporaries a crashed writer left behind."""
        self.tmp.mkdir(parents=True, exist_ok=True)
        for stale in self.tmp.iterdir():
            stale.unlink(missing_ok=True)

    def path(self, key: str) -> Path:
        check_key(key)
        return self.root / key[-2:] / key

    async def put(
        self, key: str, chunks: AsyncIterable[bytes], *, max_bytes: int | None = None
    ) -> BlobInfo:
        final = self.path(key)
        tmp = self.tmp / f"{key}.{secrets.token_hex(4)}.part"
        digest = hashlib.sha256()
        size = 0
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb", buffering=0) as f:
                async for chunk in chunks:
                    size += len(chunk)
                    if max_bytes is not None and size > max_bytes:
                        raise BlobTooLarge(f"more than {max_bytes} bytes")
                    digest.update(chunk)
                    f.write(chunk)
                await asyncio.to_thread(os.fsync, f.fileno())
            await asyncio.to_thread(self._publish, tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return BlobInfo(size=size, sha256=digest.hexdigest())

    @staticmethod
    def _publish(tmp: Path, final: Path) -> None:
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, final)
        dir_fd = os.open(final.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    async def open(self, key: str) -> AsyncIterator[bytes]:
        try:
            f = await asyncio.to_thread(open, self.path(key), "rb")
        except FileNotFoundError:
            raise BlobNotFound(key) from None

        async def stream() -> AsyncIterator[bytes]:
            with f:
                # Reads go to a thread: a cold file on a slow disk must not stall the loop.
                while chunk := await asyncio.to_thread(f.read, CHUNK):
                    yield chunk

        return stream()

    async def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)
