"""GET /health: pool capacity, for load balancers and the proxy; needs no token."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from executor.deps import ExecutorDep
from executor.models import PoolHealth

router = APIRouter(tags=["health"])


@router.get("/health", response_model=PoolHealth)
async def retrieve_health(executor: ExecutorDep) -> JSONResponse:
    """Report the sandbox pool's capacity; 503 while degraded."""
    health = await executor.health()
    return JSONResponse(health.model_dump(), status_code=200 if health.status == "ok" else 503)
