"""The Responses API: responses with the code interpreter, stored and continued."""

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from proxy.deps import DbDep, TenantDep, get_services, get_tenant
from proxy.errors import InvalidRequestError, NotFoundError
from proxy.jsonutil import JSONResponse, loads
from proxy.responses import start_response, stored_response
from proxy.responses_request import INCLUDE_OUTPUTS
from proxy.routes.chat import _stream_response, read_json
from proxy.routes.containers import page
from storage.models import StoredResponse
from storage.responses import get_response

router = APIRouter(tags=["responses"])


async def create_response(request: Request) -> Response:
    """Create a model response; with a `code_interpreter` tool, code runs server-side."""
    services = await get_services(request)
    tenant = await get_tenant(request, services)
    body = await read_json(request)
    turn = await start_response(services, tenant.id, body)
    if turn.request.stream:
        return await _stream_response(turn.stream())
    return JSONResponse(await turn.complete())


# A plain Starlette route, as chat completions: no per-request dependency solving.
router.add_route("/responses", create_response, methods=["POST"])


def _includes(request: Request) -> bool:
    """Whether `include` (the SDK sends `include[]=…`) asks for interpreter outputs."""
    values = request.query_params.getlist("include[]") + request.query_params.getlist("include")
    return INCLUDE_OUTPUTS in values


async def _require(db: Any, tenant: str, response_id: str) -> StoredResponse:
    row = await get_response(db, tenant=tenant, response_id=response_id)
    if row is None:
        raise NotFoundError(f"Response with id '{response_id}' not found.", param="response_id")
    return row


@router.get("/responses/{response_id}")
async def retrieve_response(
    response_id: str, request: Request, tenant: TenantDep, db: DbDep, stream: bool = False
) -> dict[str, Any]:
    """Retrieve a stored response (`include[]=code_interpreter_call.outputs` for outputs)."""
    if stream:
        raise InvalidRequestError(
            "Streaming a stored response again is not supported.", param="stream"
        )
    return stored_response(await _require(db, tenant.id, response_id), _includes(request))


@router.delete("/responses/{response_id}")
async def delete_response(response_id: str, tenant: TenantDep, db: DbDep) -> dict[str, Any]:
    """Delete a stored response."""
    row = await _require(db, tenant.id, response_id)
    await db.delete(row)
    await db.commit()
    return {"id": response_id, "object": "response", "deleted": True}


@router.get("/responses/{response_id}/input_items")
async def list_input_items(
    response_id: str,
    tenant: TenantDep,
    db: DbDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Literal["asc", "desc"] = "desc",
) -> dict[str, Any]:
    """The input items of a stored response, newest first by default."""
    items: list[dict[str, Any]] = loads((await _require(db, tenant.id, response_id)).input_items)
    if order == "desc":
        items.reverse()
    if after is not None:
        ids = [item.get("id") for item in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    return page(items[:limit], len(items) > limit)
