"""The Containers API: a container is an executor session, whichever surface made it."""

import shlex
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel.ext.asyncio.session import AsyncSession
from starlette.responses import StreamingResponse

from executor.api import ExecuteRequest, Executor, SessionInfo, relative_data_path
from proxy.coderunner import CodeRunner
from proxy.containers import (
    ContainerSpec,
    file_public,
    public,
    record_file,
    require_container,
)
from proxy.deps import DbDep, ExecutorDep, Services, ServicesDep, TenantDep
from proxy.errors import InvalidRequestError, NotFoundError, PayloadTooLargeError
from proxy.filestore import (
    add_file_row,
    content_disposition,
    open_file,
    require_file,
    save_blob,
)
from proxy.multipart import FileData, FileEnd, FileStart, boundary_of, read_events
from proxy.routes.chat import read_json
from storage.containers import (
    delete_container as remove_container,
)
from storage.containers import (
    get_container_file,
    list_container_files,
    list_containers,
)
from storage.files import get_file
from storage.models import Container, ContainerFile, File

router = APIRouter(prefix="/containers", tags=["containers"])

FORM_OVERHEAD = 64 * 1024


class ExpiresAfter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    anchor: Literal["last_active_at"]
    minutes: int = Field(ge=1)


class NetworkPolicy(BaseModel):
    # Sandboxes never have a network: only the policy that says so can be honoured.
    type: Literal["disabled"]


class CreateContainer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    file_ids: list[str] = Field(default_factory=list, max_length=50)
    expires_after: ExpiresAfter | None = None
    memory_limit: Literal["1g", "4g", "16g", "64g"] | None = None
    network_policy: NetworkPolicy | None = None


class AddFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    file_id: str


def page(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


@router.post("")
async def create_container(
    body: CreateContainer, tenant: TenantDep, services: ServicesDep, executor: ExecutorDep
) -> dict[str, Any]:
    """Create a container (a sandbox session), with files copied in from `file_ids`."""
    runner = CodeRunner(services, executor, tenant.id, source="containers")
    runner.spec = ContainerSpec(
        body.name,
        body.memory_limit,
        body.expires_after.minutes if body.expires_after is not None else None,
    )
    await runner.attach(session_id=None, file_ids=list(dict.fromkeys(body.file_ids)))
    container_id = await runner.session()
    row, info = await require_container(services.db, executor, tenant.id, container_id)
    return public(row, info)


@router.get("")
async def list_all_containers(
    tenant: TenantDep,
    db: DbDep,
    services: ServicesDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Literal["asc", "desc"] = "desc",
    name: str | None = None,
) -> dict[str, Any]:
    """List the caller's containers, newest first by default, with cursor pagination."""
    rows, has_more = await list_containers(
        db, tenant=tenant.id, after=after, limit=limit, order=order, name=name
    )
    live: dict[str, SessionInfo] = {}
    if services.executor is not None and rows:
        live = {s.id: s for s in await services.executor.list_sessions(tenant.id)}
    return page([public(row, live.get(row.id)) for row in rows], has_more)


@router.get("/{container_id}")
async def retrieve_container(
    container_id: str, tenant: TenantDep, services: ServicesDep
) -> dict[str, Any]:
    """Retrieve a container; `status` is `running` while its sandbox lives, then `expired`."""
    row, info = await require_container(services.db, services.executor, tenant.id, container_id)
    return public(row, info)


@router.delete("/{container_id}")
async def delete_container(
    container_id: str, tenant: TenantDep, services: ServicesDep, db: DbDep
) -> dict[str, Any]:
    """Delete a container: its sandbox ends and its files are no longer listed."""
    row, info = await require_container(services.db, services.executor, tenant.id, container_id)
    if info is not None and services.executor is not None:
        await services.executor.delete_session(tenant.id, container_id)
    await remove_container(db, container=row)
    return {"id": container_id, "object": "container.deleted", "deleted": True}


@router.post("/{container_id}/files")
async def create_container_file(
    container_id: str,
    request: Request,
    tenant: TenantDep,
    services: ServicesDep,
    executor: ExecutorDep,
) -> dict[str, Any]:
    """Put a file in the container: a multipart `file` upload, or JSON `{"file_id"}`."""
    await _running(services, executor, tenant.id, container_id)
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        row = await _upload(request, services, tenant.id)
    else:
        body = AddFile.model_validate(await read_json(request))
        async with services.db() as db:
            row = await require_file(db, tenant=tenant.id, file_id=body.file_id)
    path = f"/mnt/data/{row.filename}"
    chunks = await open_file(services.blobs, row)
    await executor.upload_file(tenant.id, container_id, path, chunks)
    record = await record_file(
        services.db, tenant=tenant.id, container_id=container_id, path=path, row=row, source="user"
    )
    return file_public(record)


async def _running(
    services: Services, executor: Executor, tenant: str, container_id: str
) -> Container:
    row, info = await require_container(services.db, executor, tenant, container_id)
    if info is None:
        raise InvalidRequestError(
            f"Container {container_id} has expired; create a new one.",
            param="container_id",
            code="container_expired",
        )
    return row


async def _upload(request: Request, services: Services, tenant: str) -> File:
    """The multipart `file` part, stored as a tenant file."""
    limit = services.settings.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit + FORM_OVERHEAD:
        raise PayloadTooLargeError(f"File is too large: the limit is {limit} bytes.", param="file")
    events = read_events(boundary_of(request.headers.get("content-type")), request.stream())
    row: File | None = None
    async for event in events:
        if isinstance(event, FileStart) and event.name == "file" and row is None:
            file_id, blob = await save_blob(services.blobs, _file_chunks(events), max_bytes=limit)
            row = await add_file_row(
                services.db,
                services.blobs,
                file_id=file_id,
                blob=blob,
                tenant=tenant,
                filename=event.filename,
                purpose="user_data",
                content_type=event.content_type,
            )
    if row is None:
        raise InvalidRequestError("Missing required parameter: 'file'.", param="file")
    return row


async def _file_chunks(events: AsyncIterator[Any]) -> AsyncIterator[bytes]:
    async for event in events:
        if isinstance(event, FileData):
            yield event.data
        elif isinstance(event, FileEnd):
            return


@router.get("/{container_id}/files")
async def list_files_of_container(
    container_id: str,
    tenant: TenantDep,
    services: ServicesDep,
    db: DbDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Literal["asc", "desc"] = "desc",
) -> dict[str, Any]:
    """List the files in a container: given, uploaded, and written by its code."""
    await require_container(services.db, services.executor, tenant.id, container_id)
    rows, has_more = await list_container_files(
        db, tenant=tenant.id, container_id=container_id, after=after, limit=limit, order=order
    )
    return page([file_public(row) for row in rows], has_more)


@router.get("/{container_id}/files/{file_id}")
async def retrieve_container_file(
    container_id: str, file_id: str, tenant: TenantDep, db: DbDep
) -> dict[str, Any]:
    """Retrieve one container file."""
    return file_public(await _require_file(db, tenant.id, container_id, file_id))


@router.delete("/{container_id}/files/{file_id}")
async def delete_container_file(
    container_id: str, file_id: str, tenant: TenantDep, db: DbDep, services: ServicesDep
) -> dict[str, Any]:
    """Delete a file from the container (and from its sandbox while that lives)."""
    row = await _require_file(db, tenant.id, container_id, file_id)
    executor = services.executor
    if executor is not None:
        _, info = await require_container(services.db, executor, tenant.id, container_id)
        if info is not None:
            path = "/mnt/data/" + relative_data_path(row.path)
            await executor.execute(
                tenant.id,
                ExecuteRequest(
                    session_id=container_id, code=f"rm -f -- {shlex.quote(path)}", language="bash"
                ),
            )
    await db.delete(row)
    await db.commit()
    return {"id": file_id, "object": "container.file.deleted", "deleted": True}


@router.get("/{container_id}/files/{file_id}/content")
async def retrieve_container_file_content(
    container_id: str, file_id: str, tenant: TenantDep, db: DbDep, services: ServicesDep
) -> StreamingResponse:
    """The file's bytes (kept after the container expired)."""
    record = await _require_file(db, tenant.id, container_id, file_id)
    row = await get_file(db, tenant=tenant.id, file_id=record.file_id)
    if row is None:
        raise NotFoundError(f"No content for container file {file_id}.", param="file_id")
    return StreamingResponse(
        await open_file(services.blobs, row),
        media_type=row.content_type,
        headers={
            "content-length": str(row.bytes),
            "content-disposition": content_disposition(record.path.rsplit("/", 1)[-1]),
        },
    )


async def _require_file(
    db: AsyncSession, tenant: str, container_id: str, file_id: str
) -> ContainerFile:
    record = await get_container_file(db, tenant=tenant, container_id=container_id, file_id=file_id)
    if record is None:
        raise NotFoundError(f"Container file {file_id} not found.", param="file_id")
    return record
