"""Threads: create (with messages), retrieve, modify, delete."""

import contextlib
from typing import Any

from fastapi import APIRouter

from executor.api import ExecutorError
from proxy.assistants.objects import deleted, thread_object
from proxy.assistants.routes.common import RunsDep, check_files, new_message
from proxy.assistants.schemas import CreateThread, ModifyThread, check_tool_resources
from proxy.assistants.store import dump, new_row, public, require
from proxy.deps import DbDep, ServicesDep, TenantDep
from storage.assistants import delete_thread_objects
from storage.models import Thread

router = APIRouter(tags=["assistants"])


async def make_thread(
    db: Any, tenant: str, body: CreateThread, param: str = ""
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A new thread and its first messages, checked (not stored yet)."""
    prefix = f"{param}." if param else ""
    resources = check_tool_resources(body.tool_resources, f"{prefix}tool_resources")
    await check_files(db, tenant, resources)
    thread = thread_object(tool_resources=resources, metadata=body.metadata)
    messages = [
        await new_message(db, tenant, thread["id"], message, f"{prefix}messages[{i}]")
        for i, message in enumerate(body.messages)
    ]
    return thread, messages


def add_thread(
    db: Any, tenant: str, thread: dict[str, Any], messages: list[dict[str, Any]]
) -> None:
    db.add(new_row(thread, tenant=tenant))
    for message in messages:
        db.add(new_row(message, tenant=tenant, thread_id=thread["id"]))


@router.post("/threads")
async def create_thread(
    tenant: TenantDep, db: DbDep, body: CreateThread | None = None
) -> dict[str, Any]:
    """Create a thread, with messages to start it if given."""
    thread, messages = await make_thread(db, tenant.id, body or CreateThread())
    add_thread(db, tenant.id, thread, messages)
    await db.commit()
    return thread


@router.get("/threads/{thread_id}")
async def retrieve_thread(thread_id: str, tenant: TenantDep, db: DbDep) -> dict[str, Any]:
    """Retrieve a thread."""
    return public(await require(db, Thread, tenant=tenant.id, id=thread_id))


@router.post("/threads/{thread_id}")
async def modify_thread(
    thread_id: str, body: ModifyThread, tenant: TenantDep, db: DbDep
) -> dict[str, Any]:
    """Modify a thread's metadata or tool resources."""
    row = await require(db, Thread, tenant=tenant.id, id=thread_id)
    obj = public(row)
    if "tool_resources" in body.model_fields_set:
        obj["tool_resources"] = check_tool_resources(body.tool_resources, "tool_resources")
        await check_files(db, tenant.id, obj["tool_resources"])
    if "metadata" in body.model_fields_set:
        obj["metadata"] = body.metadata or {}
    row.data = dump(obj)
    db.add(row)
    await db.commit()
    return obj


@router.delete("/threads/{thread_id}")
async def delete_thread(
    thread_id: str, tenant: TenantDep, db: DbDep, services: ServicesDep, runs: RunsDep
) -> dict[str, Any]:
    """Delete a thread with its messages, runs and steps; its active run is cancelled and its
    sandbox closed."""
    row = await require(db, Thread, tenant=tenant.id, id=thread_id)
    if row.active_run_id is not None:
        await runs.cancel(row.active_run_id, wait=services.settings.keepalive_interval)
    session_id = row.session_id
    await delete_thread_objects(db, thread_id=thread_id)
    await db.delete(row)
    await db.commit()
    if session_id is not None and services.executor is not None:
        with contextlib.suppress(ExecutorError):
            await services.executor.delete_session(tenant.id, session_id)
    return deleted(thread_id, "thread")
