"""The S3 blob store against a real S3-protocol server on loopback (moto in server mode):
streamed multipart uploads, and nothing left behind by a failed one."""

import itertools
from collections.abc import AsyncIterator

import pytest

from storage.blobs import BlobNotFound, BlobStoreError, BlobTooLarge, open_blob_store
from storage.s3blobs import PART_SIZE, S3BlobStore
from tests.s3server import S3Server

MIB = 1024 * 1024
_buckets = itertools.count(1)


@pytest.fixture
def bucket(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    name = f"blobs-{next(_buckets)}"
    s3_server.create_bucket(name)
    return name


@pytest.fixture
def store(s3_server: S3Server, bucket: str) -> S3BlobStore:
    blobs = open_blob_store(f"s3://{bucket}/some/prefix", s3_endpoint_url=s3_server.endpoint)
    assert isinstance(blobs, S3BlobStore)
    return blobs


def objects(s3_server: S3Server, bucket: str) -> list[str]:
    listing = s3_server.client().list_objects_v2(Bucket=bucket)
    return [o["Key"] for o in listing.get("Contents", [])]


def unfinished_uploads(s3_server: S3Server, bucket: str) -> list[str]:
    listing = s3_server.client().list_multipart_uploads(Bucket=bucket)
    return [u["Key"] for u in listing.get("Uploads", [])]


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def read_all(store: S3BlobStore, key: str) -> bytes:
    return b"".join([c async for c in await store.open(key)])


async def test_put_open_delete(store: S3BlobStore, s3_server: S3Server, bucket: str) -> None:
    info = await store.put("file-abc123", chunks(b"hello ", b"world"))
    assert info.size == 11
    assert info.sha256 == "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
    assert objects(s3_server, bucket) == ["some/prefix/file-abc123"]
    assert await read_all(store, "file-abc123") == b"hello world"
    await store.delete("file-abc123")
    with pytest.raises(BlobNotFound):
        await store.open("file-abc123")
    await store.delete("file-abc123")  # deleting twice is fine
    assert objects(s3_server, bucket) == []


async def test_large_blobs_go_up_in_parts(
    store: S3BlobStore, s3_server: S3Server, bucket: str
) -> None:
    block = bytes(range(256)) * 4096  # 1 MiB
    count = 2 * PART_SIZE // MIB + 3
    info = await store.put("file-large", chunks(*[block] * count))
    assert info.size == count * MIB
    head = s3_server.client().head_object(Bucket=bucket, Key="some/prefix/file-large")
    assert head["ContentLength"] == count * MIB
    assert head["ETag"].strip('"').endswith("-3")  # three parts: a multipart upload
    assert await read_all(store, "file-large") == block * count


async def test_too_large_keeps_nothing(
    store: S3BlobStore, s3_server: S3Server, bucket: str
) -> None:
    big = b"x" * MIB
    with pytest.raises(BlobTooLarge):
        await store.put("file-big", chunks(*[big] * 20), max_bytes=19 * MIB)
    assert objects(s3_server, bucket) == []
    assert unfinished_uploads(s3_server, bucket) == []


async def test_failure_mid_stream_keeps_nothing(
    store: S3BlobStore, s3_server: S3Server, bucket: str
) -> None:
    async def broken() -> AsyncIterator[bytes]:
        for _ in range(12):
            yield b"y" * MIB
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await store.put("file-broken", broken())
    with pytest.raises(BlobNotFound):
        await store.open("file-broken")
    assert objects(s3_server, bucket) == []
    assert unfinished_uploads(s3_server, bucket) == []


async def test_an_unreachable_store_is_a_blob_store_error(s3_server: S3Server, bucket: str) -> None:
    store = open_blob_store("s3://no-such-bucket/x", s3_endpoint_url=s3_server.endpoint)
    with pytest.raises(BlobStoreError):
        await store.put("file-1", chunks(b"data"))


def test_blob_urls() -> None:
    for bad in ("s3://", "ftp://host/x", "blobs"):
        with pytest.raises(ValueError, match="CODEPROXY_BLOB_URL"):
            open_blob_store(bad)
