"""Downloads through signed links: no API key, for browsers rendering a chat app's reply."""

import time

from fastapi import APIRouter
from starlette.responses import StreamingResponse

from proxy.deps import DbDep, ServicesDep
from proxy.errors import APIError, NotFoundError
from proxy.filestore import content_disposition, open_file
from proxy.links import check
from storage.files import get_any_file

router = APIRouter(tags=["files"])


# Raster images render in place; anything else (SVG and HTML included) is an attachment, so
# generated content can never run script on this origin.
INLINE_TYPES = {"image/png", "image/jpeg", "image/gif", "image/webp"}


class LinkExpiredError(APIError):
    status = 403
    type = "invalid_request_error"
    default_code = "link_expired"


@router.get("/files/{file_id}/download/{filename:path}")
async def download_signed_file(
    file_id: str, filename: str, expires: int, signature: str, db: DbDep, services: ServicesDep
) -> StreamingResponse:
    """Stream a file named by a signed link (inline for images, so they render in place)."""
    row = await get_any_file(db, file_id=file_id)
    if row is None or not check(services.signing_key, row, expires=expires, sig=signature):
        raise NotFoundError(f"No such File object: {file_id}", param="file_id")
    if expires < time.time():
        raise LinkExpiredError("This download link has expired.")
    inline = row.content_type in INLINE_TYPES
    return StreamingResponse(
        await open_file(services.blobs, row),
        media_type=row.content_type,
        headers={
            "content-length": str(row.bytes),
            "content-disposition": content_disposition(
                row.filename, "inline" if inline else "attachment"
            ),
            "cache-control": "private, max-age=3600",
            "x-content-type-options": "nosniff",
            "content-security-policy": "default-src 'none'; sandbox",
        },
    )
