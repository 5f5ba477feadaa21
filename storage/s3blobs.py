"""File bytes in an S3-compatible object store (AWS S3, SeaweedFS, Garage, Ceph RGW, …).

Objects are written with obstore's streaming upload: multipart in parts of `part_size`, at most
`concurrency` parts in flight, so an upload holds about `part_size * concurrency` bytes in
memory whatever its size. S3 publishes an object only when its upload completes, so a failed or
abandoned upload leaves no object (obstore aborts the multipart upload; a bucket lifecycle rule
for incomplete multipart uploads catches what a crashed process could not abort).
"""

import contextlib
import hashlib
from collections.abc import AsyncIterable, AsyncIterator
from datetime import timedelta
from typing import TYPE_CHECKING

import obstore
from obstore.exceptions import BaseError as ObstoreError
from obstore.store import S3Store

from storage.blobs import CHUNK, BlobInfo, BlobNotFound, BlobStoreError, BlobTooLarge, check_key

if TYPE_CHECKING:
    from obstore.store import ClientConfig, S3Config

PART_SIZE = 8 * 1024 * 1024
CONCURRENCY = 2
CONNECT_TIMEOUT = timedelta(seconds=10)
READ_TIMEOUT = timedelta(seconds=60)
REQUEST_TIMEOUT = timedelta(hours=1)
# What obstore raises when the store fails (a missing bucket is a FileNotFoundError).
_FAILURES = (ObstoreError, FileNotFoundError)


class S3BlobStore:
    """Blobs as objects `<prefix>/<key>` in one bucket."""

    def __init__(self, store: S3Store) -> None:
        self._store = store

    @classmethod
    def from_url(cls, url: str, *, endpoint_url: str | None = None) -> "S3BlobStore":
        """`s3://bucket/prefix`; credentials and region from the standard `AWS_*` variables."""
        options: ClientConfig = {
            "connect_timeout": CONNECT_TIMEOUT,
            # Per read, not per request: a large download to a slow client may take long.
            "read_timeout": READ_TIMEOUT,
            "timeout": REQUEST_TIMEOUT,
        }
        config: S3Config = {}
        if endpoint_url:
            config["endpoint"] = endpoint_url
            options["allow_http"] = endpoint_url.startswith("http:")
        return cls(S3Store.from_url(url, config=config, client_options=options))

    async def put(
        self, key: str, chunks: AsyncIterable[bytes], *, max_bytes: int | None = None
    ) -> BlobInfo:
        check_key(key)
        digest = hashlib.sha256()
        size = 0

        async def counted() -> AsyncIterator[bytes]:
            nonlocal size
            async for chunk in chunks:
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    raise BlobTooLarge(f"more than {max_bytes} bytes")
                digest.update(chunk)
                yield chunk

        try:
            await obstore.put_async(
                self._store, key, counted(), chunk_size=PART_SIZE, max_concurrency=CONCURRENCY
            )
        except _FAILURES as exc:
            with contextlib.suppress(BlobStoreError):
                await self.delete(key)
            raise BlobStoreError(f"storing {key} failed: {exc}") from exc
        except BaseException:
            # A cancelled upload may have completed in the background; take it back.
            with contextlib.suppress(BlobStoreError):
                await self.delete(key)
            raise
        return BlobInfo(size=size, sha256=digest.hexdigest())

    async def open(self, key: str) -> AsyncIterator[bytes]:
        check_key(key)
        try:
            result = await obstore.get_async(self._store, key)
        except FileNotFoundError:
            raise BlobNotFound(key) from None
        except ObstoreError as exc:
            raise BlobStoreError(f"reading {key} failed: {exc}") from exc

        async def stream() -> AsyncIterator[bytes]:
            try:
                async for chunk in result.stream(min_chunk_size=CHUNK):
                    yield bytes(chunk)
            except ObstoreError as exc:
                raise BlobStoreError(f"reading {key} broke off: {exc}") from exc

        return stream()

    async def delete(self, key: str) -> None:
        check_key(key)
        try:
            await obstore.delete_async(self._store, key)
        except _FAILURES as exc:  # deleting a missing object is no error; a missing bucket is
            raise BlobStoreError(f"deleting {key} failed: {exc}") from exc
