"""The Files API, as in OpenAI's spec."""

import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from starlette.responses import StreamingResponse

from proxy.deps import DbDep, ServicesDep, TenantDep
from proxy.errors import InvalidRequestError, PayloadTooLargeError
from proxy.filestore import (
    add_file_row,
    content_disposition,
    open_file,
    require_file,
    save_blob,
    storage_room,
)
from proxy.filestore import delete_file as remove_file
from proxy.multipart import Field, FileData, FileEnd, FileStart, boundary_of, read_events
from storage.blobs import BlobInfo
from storage.files import list_files as query_files
from storage.models import FilePublic

router = APIRouter(tags=["files"])

PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
BATCH_DEFAULT_TTL = 30 * 24 * 3600
# Multipart framing and the small fields around the file part.
FORM_OVERHEAD = 64 * 1024


@router.post("/files", response_model=FilePublic)
async def create_file(request: Request, tenant: TenantDep, services: ServicesDep) -> FilePublic:
    """Upload a file (multipart `file` and `purpose`, optional `expires_after`)."""
    limit = services.settings.max_upload_bytes
    declared = request.headers.get("content-length")
    size = int(declared) if declared is not None and declared.isdigit() else None
    if size is not None and size > limit + FORM_OVERHEAD:
        raise PayloadTooLargeError(f"File is too large: the limit is {limit} bytes.", param="file")
    room = await storage_room(
        services.db, tenant=tenant.id, quota=services.settings.storage_quota_bytes
    )
    if size is not None and size > room.left + FORM_OVERHEAD:
        raise room.exceeded(size)
    events = read_events(boundary_of(request.headers.get("content-type")), request.stream())
    fields: dict[str, str] = {}
    upload: tuple[str, BlobInfo, FileStart] | None = None
    try:
        async for event in events:
            if isinstance(event, Field):
                fields[event.name] = event.value
            elif isinstance(event, FileStart) and event.name == "file" and upload is None:
                file_id, blob = await save_blob(
                    services.blobs, _file_chunks(events), max_bytes=limit, room=room
                )
                upload = (file_id, blob, event)
        if upload is None:
            raise InvalidRequestError("Missing required parameter: 'file'.", param="file")
        purpose, expires_at = _validate_form(fields)
    except BaseException:
        if upload is not None:
            await services.blobs.delete(upload[0])
        raise
    file_id, blob, part = upload
    row = await add_file_row(
        services.db,
        services.blobs,
        file_id=file_id,
        blob=blob,
        tenant=tenant.id,
        filename=part.filename,
        purpose=purpose,
        content_type=part.content_type,
        expires_at=expires_at,
    )
    return row.public()


async def _file_chunks(events: AsyncIterator[Any]) -> AsyncIterator[bytes]:
    async for event in events:
        if isinstance(event, FileData):
            yield event.data
        elif isinstance(event, FileEnd):
            return


def _validate_form(fields: dict[str, str]) -> tuple[str, int | None]:
    purpose = fields.get("purpose")
    if not purpose:
        raise InvalidRequestError("Missing required parameter: 'purpose'.", param="purpose")
    if purpose not in PURPOSES:
        raise InvalidRequestError(
            f"Invalid value for 'purpose': {purpose!r}. Supported values are: "
            + ", ".join(f"'{p}'" for p in PURPOSES)
            + ".",
            param="purpose",
            code="invalid_value",
        )
    now = int(time.time())
    anchor = fields.get("expires_after[anchor]")
    seconds = fields.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return purpose, (now + BATCH_DEFAULT_TTL if purpose == "batch" else None)
    if anchor != "created_at":
        raise InvalidRequestError(
            "Invalid 'expires_after[anchor]': expected 'created_at'.",
            param="expires_after.anchor",
        )
    if seconds is None or not seconds.strip().isdigit():
        raise InvalidRequestError(
            "Invalid 'expires_after[seconds]': expected an integer.",
            param="expires_after.seconds",
        )
    ttl = int(seconds)
    if not 3600 <= ttl <= 2_592_000:
        raise InvalidRequestError(
            "Invalid 'expires_after[seconds]': expected a value between 3600 and 2592000.",
            param="expires_after.seconds",
        )
    return purpose, now + ttl


@router.get("/files")
async def list_files(
    tenant: TenantDep,
    db: DbDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    order: Literal["asc", "desc"] = "desc",
    purpose: str | None = None,
) -> dict[str, Any]:
    """List the caller's files, newest first by default, with cursor pagination."""
    rows, has_more = await query_files(
        db, tenant=tenant.id, purpose=purpose, after=after, limit=limit, order=order
    )
    return {
        "object": "list",
        "data": [row.public().model_dump() for row in rows],
        "first_id": rows[0].id if rows else None,
        "last_id": rows[-1].id if rows else None,
        "has_more": has_more,
    }


@router.get("/files/{file_id}", response_model=FilePublic)
async def retrieve_file(file_id: str, tenant: TenantDep, db: DbDep) -> FilePublic:
    """Retrieve one file's metadata."""
    return (await require_file(db, tenant=tenant.id, file_id=file_id)).public()


@router.delete("/files/{file_id}")
async def delete_file(
    file_id: str, tenant: TenantDep, db: DbDep, services: ServicesDep
) -> dict[str, Any]:
    """Delete a file and its bytes."""
    row = await require_file(db, tenant=tenant.id, file_id=file_id)
    await remove_file(db, services.blobs, row)
    return {"id": file_id, "object": "file", "deleted": True}


@router.get("/files/{file_id}/content")
async def download_file(
    file_id: str, tenant: TenantDep, db: DbDep, services: ServicesDep
) -> StreamingResponse:
    """Stream a file's bytes."""
    row = await require_file(db, tenant=tenant.id, file_id=file_id)
    return StreamingResponse(
        await open_file(services.blobs, row),
        media_type=row.content_type,
        headers={
            "content-length": str(row.bytes),
            "content-disposition": content_disposition(row.filename),
        },
    )
