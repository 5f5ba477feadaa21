"""Messages of a thread: create, list, retrieve, modify, delete."""

from typing import Any

from fastapi import APIRouter
from sqlmodel import col

from proxy.assistants.objects import deleted, listing
from proxy.assistants.routes.common import PageDep, RunsDep, new_message
from proxy.assistants.routes.runs import active_run
from proxy.assistants.schemas import CreateMessage, ModifyMessage
from proxy.assistants.store import dump, new_row, public, require
from proxy.deps import DbDep, TenantDep
from proxy.errors import InvalidRequestError
from storage.assistants import list_objects
from storage.models import Thread, ThreadMessage

router = APIRouter(tags=["assistants"])


@router.post("/threads/{thread_id}/messages")
async def create_message(
    thread_id: str, body: CreateMessage, tenant: TenantDep, db: DbDep, runs: RunsDep
) -> dict[str, Any]:
    """Add a message to a thread (not while a run of it is active, as OpenAI)."""
    thread = await require(db, Thread, tenant=tenant.id, id=thread_id)
    active = await active_run(db, runs, thread)
    if active is not None:
        raise InvalidRequestError(
            f"Can't add messages to {thread_id} while a run {active} is active.",
            param="thread_id",
        )
    message = await new_message(db, tenant.id, thread_id, body, "messages")
    db.add(new_row(message, tenant=tenant.id, thread_id=thread_id))
    await db.commit()
    return message


@router.get("/threads/{thread_id}/messages")
async def list_messages(
    thread_id: str, tenant: TenantDep, db: DbDep, page: PageDep, run_id: str | None = None
) -> dict[str, Any]:
    """List a thread's messages, newest first by default; `run_id` keeps one run's."""
    await require(db, Thread, tenant=tenant.id, id=thread_id)
    where = [col(ThreadMessage.thread_id) == thread_id]
    if run_id is not None:
        where.append(col(ThreadMessage.run_id) == run_id)
    rows, more = await list_objects(
        db,
        ThreadMessage,
        tenant=tenant.id,
        where=where,
        limit=page.limit,
        order=page.order,
        after=page.after,
        before=page.before,
    )
    return listing([public(row) for row in rows], more)


@router.get("/threads/{thread_id}/messages/{message_id}")
async def retrieve_message(
    thread_id: str, message_id: str, tenant: TenantDep, db: DbDep
) -> dict[str, Any]:
    """Retrieve a message."""
    row = await require(db, ThreadMessage, tenant=tenant.id, id=message_id, thread_id=thread_id)
    return public(row)


@router.post("/threads/{thread_id}/messages/{message_id}")
async def modify_message(
    thread_id: str, message_id: str, body: ModifyMessage, tenant: TenantDep, db: DbDep
) -> dict[str, Any]:
    """Modify a message's metadata."""
    row = await require(db, ThreadMessage, tenant=tenant.id, id=message_id, thread_id=thread_id)
    obj = public(row)
    if "metadata" in body.model_fields_set:
        obj["metadata"] = body.metadata or {}
    row.data = dump(obj)
    db.add(row)
    await db.commit()
    return obj


@router.delete("/threads/{thread_id}/messages/{message_id}")
async def delete_message(
    thread_id: str, message_id: str, tenant: TenantDep, db: DbDep
) -> dict[str, Any]:
    """Delete a message."""
    row = await require(db, ThreadMessage, tenant=tenant.id, id=message_id, thread_id=thread_id)
    await db.delete(row)
    await db.commit()
    return deleted(message_id, "thread.message")
