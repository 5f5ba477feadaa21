"""Files under a session's /mnt/data: streamed upload, listing and streamed download."""

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from executor.deps import ExecutorDep, TenantDep
from executor.errors import FileTooLarge, InvalidRequest
from executor.models import FileEntry

router = APIRouter(prefix="/sessions/{session_id}/files", tags=["files"])


@router.put("/{path:path}")
async def upload_file(
    executor: ExecutorDep, tenant: TenantDep, session_id: str, path: str, request: Request
) -> FileEntry:
    """Write the raw request body to /mnt/data/{path}, streamed."""
    limit = request.app.state.settings.max_file_bytes
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise InvalidRequest("Invalid Content-Length header.", param="Content-Length")
        if int(length) > limit:
            raise FileTooLarge(f"The file exceeds the limit of {limit} bytes.", param="file")
    return await executor.upload_file(tenant, session_id, path, request.stream())


@router.get("")
async def list_files(executor: ExecutorDep, tenant: TenantDep, session_id: str) -> dict[str, Any]:
    """List the regular files under /mnt/data."""
    files = await executor.list_files(tenant, session_id)
    return {"object": "list", "data": [f.model_dump() for f in files]}


@router.get("/{path:path}", response_class=StreamingResponse)
async def download_file(
    executor: ExecutorDep, tenant: TenantDep, session_id: str, path: str
) -> StreamingResponse:
    """Stream the bytes of /mnt/data/{path}."""
    chunks = await executor.read_file(tenant, session_id, path)
    return StreamingResponse(chunks, media_type="application/octet-stream")
