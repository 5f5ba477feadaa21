"""Sessions: a tenant's sandbox, created, listed, looked up and ended."""

from typing import Any

from fastapi import APIRouter, Response

from executor.deps import ExecutorDep, TenantDep
from executor.languages import parse_language
from executor.models import CreateSessionRequest, SessionInfo, SessionOptions

router = APIRouter(prefix="/sessions", tags=["sessions"])


@router.post("", status_code=201)
async def create_session(
    executor: ExecutorDep, tenant: TenantDep, body: CreateSessionRequest | None = None
) -> SessionInfo:
    """Start a session on a sandbox (a warm one when the pool has one)."""
    if body is None:
        return await executor.create_session(tenant)
    if body.language is not None:
        # Every sandbox runs every language; a name is only checked, to fail early.
        parse_language(body.language)
    options = SessionOptions.model_validate(body.model_dump(exclude={"language"}))
    return await executor.create_session(tenant, options)


@router.get("")
async def list_sessions(executor: ExecutorDep, tenant: TenantDep) -> dict[str, Any]:
    """List the tenant's sessions."""
    sessions = await executor.list_sessions(tenant)
    return {"object": "list", "data": [s.model_dump() for s in sessions]}


@router.get("/{session_id}")
async def retrieve_session(
    executor: ExecutorDep, tenant: TenantDep, session_id: str
) -> SessionInfo:
    """Look up one of the tenant's sessions."""
    return await executor.get_session(tenant, session_id)


@router.delete("/{session_id}", status_code=204, response_class=Response)
async def delete_session(executor: ExecutorDep, tenant: TenantDep, session_id: str) -> None:
    """End a session: stop its code and destroy its sandbox."""
    await executor.delete_session(tenant, session_id)
