"""Tenant files: metadata rows in the database, bytes in the blob store, kept consistent."""

import mimetypes
import time
import unicodedata
from collections.abc import AsyncIterable, AsyncIterator
from urllib.parse import quote

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from proxy.errors import NotFoundError, PayloadTooLargeError
from proxy.ids import new_id
from storage.blobs import BlobInfo, BlobNotFound, BlobStore, BlobTooLarge
from storage.files import get_file
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


async def save_blob(
    blobs: BlobStore, chunks: AsyncIterable[bytes], *, max_bytes: int
) -> tuple[str, BlobInfo]:
    """Store bytes under a new file id; nothing is kept if they exceed `max_bytes`."""
    file_id = new_id("file-")
    try:
        return file_id, await blobs.put(file_id, chunks, max_bytes=max_bytes)
    except BlobTooLarge:
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
    content_type: str | None = None,
) -> File:
    """Store bytes, then their row; on any failure nothing is kept."""
    file_id, blob = await save_blob(blobs, chunks, max_bytes=max_bytes)
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
