"""Tenant files: metadata rows in the database, bytes in the blob store, kept consistent."""

import mimetypes
import time
import unicodedata
from collections.abc import AsyncIterable, AsyncIterator
from urllib.parse import quote

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from proxy.errors import NotFoundError, PayloadTooLargeError, QuotaExceededError
from proxy.ids import new_id
from storage.blobs import BlobInfo, BlobNotFound, BlobStore, BlobTooLarge
from storage.files import get_file, used_bytes
from storage.models import File

GENERIC_TYPES = {"application/octet-stream", "binary/octet-stream", ""}


def clean_filename(name: str) -> str:
    """A display name: the last path component, no control characters, at most 255 chars."""
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if unicodedata.category(c)[0] != "C").strip()
    return name[:255] or "file"


def content_type_for(filename: str, declared: str | None = None) -> str:
    declared = (declared or "").split(";")[0].strip().lower()
    if declared not in GENERIC_TYPES:
        return declared
    guessed, _ = mimetypes.guess_type(filename)
    return guessed or "application/octet-stream"


def content_disposition(filename: str, disposition: str = "attachment") -> str:
    ascii_name = filename.encode("ascii", "replace").decode().replace('"', "_").replace("?", "_")
    return f"{disposition}; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename)}"


class StorageRoom:
    """A tenant's storage quota and its use, as counted before storing something."""

    def __init__(self, *, quota: int, used: int) -> None:
        self.quota = quota
        self.used = used

    @property
    def left(self) -> int:
        return max(0, self.quota - self.used)

    def exceeded(self, size: int | None = None) -> QuotaExceededError:
        what = f"{size} more bytes" if size is not None else "More bytes"
        return QuotaExceededError(
            f"{what} would exceed your storage quota of {self.quota} bytes ({self.used} bytes "
            "in use). Delete files you no longer need, then retry.",
            param="file",
        )


async def storage_room(
    db: async_sessionmaker[AsyncSession], *, tenant: str, quota: int
) -> StorageRoom:
    """What the tenant may still store under its quota."""
    async with db() as session:
        used = await used_bytes(session, tenant=tenant)
    return StorageRoom(quota=quota, used=used)


async def save_blob(
    blobs: BlobStore,
    chunks: AsyncIterable[bytes],
    *,
    max_bytes: int,
    room: StorageRoom | None = None,
) -> tuple[str, BlobInfo]:
    """Store bytes under a new file id; nothing is kept past `max_bytes` or the quota."""
    limit = max_bytes if room is None else min(max_bytes, room.left)
    if room is not None and room.left == 0:
        raise room.exceeded()
    file_id = new_id("file-")
    try:
        return file_id, await blobs.put(file_id, chunks, max_bytes=limit)
    except BlobTooLarge:
        if room is not None and limit < max_bytes:
            raise room.exceeded() from None
        raise PayloadTooLargeError(
            f"File is too large: the limit is {max_bytes} bytes.", param="file"
        ) from None


async def add_file_row(
    db: async_sessionmaker[AsyncSession],
    blobs: BlobStore,
    *,
    file_id: str,
    blob: BlobInfo,
    tenant: str,
    filename: str,
    purpose: str,
    content_type: str | None = None,
    expires_at: int | None = None,
) -> File:
    """Record a stored blob as a file; if that fails, the blob is removed."""
    filename = clean_filename(filename)
    row = File(
        id=file_id,
        tenant=tenant,
        filename=filename,
        purpose=purpose,
        bytes=blob.size,
        created_at=int(time.time()),
        expires_at=expires_at,
        sha256=blob.sha256,
        blob_key=file_id,
        content_type=content_type_for(filename, content_type),
    )
    try:
        async with db() as session:
            session.add(row)
            await session.commit()
    except BaseException:
        await blobs.delete(file_id)
        raise
    return row


async def store_file(
    db: async_sessionmaker[AsyncSession],
    blobs: BlobStore,
    *,
    tenant: str,
    filename: str,
    purpose: str,
    chunks: AsyncIterable[bytes],
    max_bytes: int,
    quota: int,
    content_type: str | None = None,
) -> File:
    """Store bytes, then their row, within the tenant's `quota`; on any failure nothing is
    kept (QuotaExceededError or PayloadTooLargeError past the limits)."""
    room = await storage_room(db, tenant=tenant, quota=quota)
    file_id, blob = await save_blob(blobs, chunks, max_bytes=max_bytes, room=room)
    return await add_file_row(
        db,
        blobs,
        file_id=file_id,
        blob=blob,
        tenant=tenant,
        filename=filename,
        purpose=purpose,
        content_type=content_type,
    )


async def require_file(session: AsyncSession, *, tenant: str, file_id: str) -> File:
    row = await get_file(session, tenant=tenant, file_id=file_id)
    if row is None:
        raise NotFoundError(f"No such File object: {file_id}", param="file_id")
    return row


async def open_file(blobs: BlobStore, row: File) -> AsyncIterator[bytes]:
    try:
        return await blobs.open(row.blob_key)
    except BlobNotFound:
        raise NotFoundError(f"No content for file {row.id}.", param="file_id") from None


async def delete_file(session: AsyncSession, blobs: BlobStore, row: File) -> None:
    """Row first: a crash in between leaves an unreferenced blob, never a row without bytes."""
    await session.delete(row)
    await session.commit()
    await blobs.delete(row.blob_key)
