"""Direct code execution without a model: sessions and runs, scoped to the caller."""

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from executor.api import SessionInfo, check_code, check_text, parse_language
from proxy.coderunner import CodeRunner
from proxy.deps import ExecutorDep, ServicesDep, TenantDep

router = APIRouter(prefix="/code_interpreter", tags=["code_interpreter"])


class RunRequest(BaseModel):
    code: str
    language: str = "python"
    timeout: float | None = Field(default=None, gt=0)
    session_id: str | None = None
    # Text files to create under /mnt/data before running, by path.
    files: dict[str, str] = Field(default_factory=dict)
    file_ids: list[str] = Field(default_factory=list)


class CreateSessionRequest(BaseModel):
    language: str | None = None


def session_public(info: SessionInfo) -> dict[str, Any]:
    return {
        "id": info.id,
        "object": "code_interpreter.session",
        "status": info.status,
        "created_at": int(info.created_at),
        "last_active_at": int(info.last_active_at),
        "expires_at": int(info.expires_at),
        "executions": info.executions,
    }


@router.post("/run")
async def run_code(
    body: RunRequest, tenant: TenantDep, services: ServicesDep, executor: ExecutorDep
) -> dict[str, Any]:
    """Run code in a session (a new one unless `session_id` is given) and return its output."""
    check_request(body, services.settings.max_code_bytes)
    parse_language(body.language)
    runner = CodeRunner(services, executor, tenant.id, source="run")
    await runner.attach(session_id=body.session_id, file_ids=body.file_ids)
    session_id = await runner.session()
    for path, text in body.files.items():
        await executor.upload_file(tenant.id, session_id, path, _text(text))
    run = await runner.run(body.code, body.language, timeout=body.timeout)
    r = run.result
    error = None
    if r.error is not None:
        error = f"{r.error.name}: {r.error.value}"
    elif r.exit_code:
        error = r.stderr or f"exit code {r.exit_code}"
    public = run.public()
    return {
        "execution_id": run.id,
        "object": "code_interpreter.execution",
        "session_id": session_id,
        "output": r.stdout,
        "error": error,
        "exit_code": r.exit_code if r.exit_code is not None else (1 if r.error else 0),
        "duration_ms": r.duration_ms,
        **{
            k: v
            for k, v in public.items()
            if k not in ("id", "error", "exit_code", "duration_ms", "code")
        },
        "traceback": r.error.traceback if r.error else None,
    }


def check_request(body: RunRequest, max_code_bytes: int) -> None:
    """Refuse what could not be run or stored, before a session is started for it."""
    check_code(body.code, max_code_bytes)
    check_text(body.language, "language")
    if body.session_id is not None:
        check_text(body.session_id, "session_id")
    for file_id in body.file_ids:
        check_text(file_id, "file_ids")
    for path, text in body.files.items():
        check_text(path, "files")
        check_text(text, f"files.{path}")


async def _text(text: str) -> AsyncIterator[bytes]:
    yield text.encode()


@router.post("/sessions")
async def create_session(
    tenant: TenantDep, executor: ExecutorDep, body: CreateSessionRequest | None = None
) -> dict[str, Any]:
    """Start a sandbox session; Python state and /mnt/data persist across its runs."""
    if body is not None and body.language is not None:
        parse_language(body.language)
    return session_public(await executor.create_session(tenant.id))


@router.get("/sessions")
async def list_sessions(tenant: TenantDep, executor: ExecutorDep) -> dict[str, Any]:
    """List the caller's live sessions."""
    data = [session_public(s) for s in await executor.list_sessions(tenant.id)]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": False,
    }


@router.get("/sessions/{session_id}")
async def retrieve_session(
    session_id: str, tenant: TenantDep, executor: ExecutorDep
) -> dict[str, Any]:
    """Retrieve one session."""
    return session_public(await executor.get_session(tenant.id, session_id))


@router.delete("/sessions/{session_id}")
async def delete_session(
    session_id: str, tenant: TenantDep, executor: ExecutorDep
) -> dict[str, Any]:
    """End a session and free its sandbox."""
    await executor.delete_session(tenant.id, session_id)
    return {"id": session_id, "object": "code_interpreter.session.deleted", "deleted": True}
