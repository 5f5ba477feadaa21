"""The upstream's models, passed through."""

from typing import Any
from urllib.parse import quote

from fastapi import APIRouter

from proxy.deps import ServicesDep, TenantDep
from proxy.policy import real_model, with_virtual_models

router = APIRouter(tags=["models"])


@router.get("/models")
async def list_models(_tenant: TenantDep, services: ServicesDep) -> Any:
    """List the upstream's models, plus their "with code" virtual names."""
    return with_virtual_models(await services.upstream.get("models"), services.settings)


@router.get("/models/{model:path}")
async def retrieve_model(model: str, _tenant: TenantDep, services: ServicesDep) -> Any:
    """Retrieve one upstream model (or the virtual "with code" name of one)."""
    real = real_model(model, services.settings)
    found = await services.upstream.get("models/" + quote(real or model, safe=""))
    if real is not None and isinstance(found, dict):
        found = {**found, "id": model}
    return found
