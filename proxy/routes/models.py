"""The upstream's models, passed through."""

from typing import Any
from urllib.parse import quote

from fastapi import APIRouter

from proxy.deps import ServicesDep, TenantDep

router = APIRouter(tags=["models"])


@router.get("/models")
async def list_models(_tenant: TenantDep, services: ServicesDep) -> Any:
    """List the upstream's models."""
    return await services.upstream.get("models")


@router.get("/models/{model:path}")
async def retrieve_model(model: str, _tenant: TenantDep, services: ServicesDep) -> Any:
    """Retrieve one upstream model."""
    return await services.upstream.get("models/" + quote(model, safe=""))
