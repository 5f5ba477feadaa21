"""Run steps: list and retrieve."""

from typing import Annotated, Any

from fastapi import APIRouter, Query
from sqlmodel import col

from proxy.assistants.objects import listing
from proxy.assistants.routes.common import PageDep
from proxy.assistants.store import public, require
from proxy.deps import DbDep, TenantDep
from storage.assistants import list_objects
from storage.models import RunStep, ThreadRun

router = APIRouter(tags=["assistants"])

# The SDK may ask for file search results; there are none to include.
Include = Annotated[list[str] | None, Query(alias="include[]")]


@router.get("/threads/{thread_id}/runs/{run_id}/steps")
async def list_run_steps(
    thread_id: str,
    run_id: str,
    tenant: TenantDep,
    db: DbDep,
    page: PageDep,
    include: Include = None,
) -> dict[str, Any]:
    """List a run's steps, newest first by default."""
    await require(db, ThreadRun, tenant=tenant.id, id=run_id, thread_id=thread_id)
    rows, more = await list_objects(
        db,
        RunStep,
        tenant=tenant.id,
        where=[col(RunStep.run_id) == run_id],
        limit=page.limit,
        order=page.order,
        after=page.after,
        before=page.before,
    )
    return listing([public(row) for row in rows], more)


@router.get("/threads/{thread_id}/runs/{run_id}/steps/{step_id}")
async def retrieve_run_step(
    thread_id: str,
    run_id: str,
    step_id: str,
    tenant: TenantDep,
    db: DbDep,
    include: Include = None,
) -> dict[str, Any]:
    """Retrieve a run step."""
    await require(db, ThreadRun, tenant=tenant.id, id=run_id, thread_id=thread_id)
    return public(await require(db, RunStep, tenant=tenant.id, id=step_id, run_id=run_id))
