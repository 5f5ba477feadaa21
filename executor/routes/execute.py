"""POST /execute: run code in a session; a client that hangs up cancels the run."""

import asyncio

from fastapi import APIRouter, Request, Response

from executor.deps import ExecutorDep, TenantDep
from executor.models import ExecuteRequest, ExecutionResult

router = APIRouter(tags=["execute"])

# nginx's "client closed request": the status is logged but never reaches anyone.
CLIENT_CLOSED_REQUEST = 499


@router.post("/execute", response_model=ExecutionResult)
async def execute(
    body: ExecuteRequest, request: Request, executor: ExecutorDep, tenant: TenantDep
) -> Response:
    """Run code in the session's sandbox and return everything it produced."""
    run = asyncio.create_task(executor.execute(tenant, body), name="execute")
    hangup = asyncio.create_task(_disconnected(request), name="execute-disconnect-watch")
    try:
        await asyncio.wait({run, hangup}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        # Runs on a disconnect, and also when this handler itself is cancelled (shutdown).
        hangup.cancel()
        if not run.done():
            run.cancel()
            await asyncio.wait({run})
    if hangup.done() and not hangup.cancelled():
        hangup.exception()  # consumed: a broken connection counts as a hang-up
    if run.cancelled():
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    # Serialised directly: the result is already a validated model, and this is the hot path.
    return Response(run.result().model_dump_json(), media_type="application/json")


async def _disconnected(request: Request) -> None:
    """Return once the client has gone away.

    The body has been read already, so the next ASGI message can only be `http.disconnect`;
    waiting on `receive` notices it at once, where polling `is_disconnected()` would lag.
    """
    while (await request.receive())["type"] != "http.disconnect":
        pass
