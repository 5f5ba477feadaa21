"""Assistants: create, list, retrieve, modify, delete."""

from typing import Any

from fastapi import APIRouter

from proxy.assistants.objects import deleted, listing, now
from proxy.assistants.routes.common import PageDep, check_files
from proxy.assistants.schemas import (
    AssistantFields,
    CreateAssistant,
    ModifyAssistant,
    check_response_format,
    check_tool_resources,
    check_tools,
)
from proxy.assistants.store import dump, new_row, public, require
from proxy.deps import DbDep, TenantDep
from proxy.ids import new_id
from storage.assistants import list_objects
from storage.models import Assistant

router = APIRouter(tags=["assistants"])


def _apply(obj: dict[str, Any], body: AssistantFields, fields: set[str]) -> None:
    """Set the fields a request gives, checked and in their stored shape."""
    for name in fields:
        value = getattr(body, name)
        if name == "tools":
            value = check_tools(value or [])
        elif name == "tool_resources":
            value = check_tool_resources(value, "tool_resources")
        elif name == "response_format":
            value = check_response_format(value, "response_format") or "auto"
        elif name == "metadata":
            value = value or {}
        elif name == "model" and value is None:
            continue
        obj[name] = value


@router.post("/assistants")
async def create_assistant(body: CreateAssistant, tenant: TenantDep, db: DbDep) -> dict[str, Any]:
    """Create an assistant."""
    obj: dict[str, Any] = {
        "id": new_id("asst_"),
        "object": "assistant",
        "created_at": now(),
        "name": None,
        "description": None,
        "model": body.model,
        "instructions": None,
        "tools": [],
        "tool_resources": {},
        "metadata": {},
        "temperature": 1.0,
        "top_p": 1.0,
        "response_format": "auto",
    }
    _apply(obj, body, body.model_fields_set)
    await check_files(db, tenant.id, obj["tool_resources"])
    db.add(new_row(obj, tenant=tenant.id))
    await db.commit()
    return obj


@router.get("/assistants")
async def list_assistants(tenant: TenantDep, db: DbDep, page: PageDep) -> dict[str, Any]:
    """List the caller's assistants, newest first by default."""
    rows, more = await list_objects(
        db,
        Assistant,
        tenant=tenant.id,
        limit=page.limit,
        order=page.order,
        after=page.after,
        before=page.before,
    )
    return listing([public(row) for row in rows], more)


@router.get("/assistants/{assistant_id}")
async def retrieve_assistant(assistant_id: str, tenant: TenantDep, db: DbDep) -> dict[str, Any]:
    """Retrieve an assistant."""
    return public(await require(db, Assistant, tenant=tenant.id, id=assistant_id))


@router.post("/assistants/{assistant_id}")
async def modify_assistant(
    assistant_id: str, body: ModifyAssistant, tenant: TenantDep, db: DbDep
) -> dict[str, Any]:
    """Modify an assistant: the fields given replace the stored ones."""
    row = await require(db, Assistant, tenant=tenant.id, id=assistant_id)
    obj = public(row)
    _apply(obj, body, body.model_fields_set)
    await check_files(db, tenant.id, obj["tool_resources"])
    row.data = dump(obj)
    db.add(row)
    await db.commit()
    return obj


@router.delete("/assistants/{assistant_id}")
async def delete_assistant(assistant_id: str, tenant: TenantDep, db: DbDep) -> dict[str, Any]:
    """Delete an assistant (its runs keep what they were created with)."""
    row = await require(db, Assistant, tenant=tenant.id, id=assistant_id)
    await db.delete(row)
    await db.commit()
    return deleted(assistant_id, "assistant")
