"""The upstream's models, passed through."""

from typing import Any
from urllib.parse import quote

from fastapi import APIRouter

from proxy.deps import ServicesDep, TenantDep
from proxy.errors import NotFoundError, UpstreamError
from proxy.policy import real_model, with_virtual_models

router = APIRouter(tags=["models"])


@router.get("/models")
async def list_models(_tenant: TenantDep, services: ServicesDep) -> Any:
    """List the upstream's models, plus their "with code" virtual names."""
    return with_virtual_models(await services.upstream.get("models"), services.settings)


@router.get("/models/{model:path}")
async def retrieve_model(model: str, _tenant: TenantDep, services: ServicesDep) -> Any:
    """Retrieve one upstream model (or the virtual "with code" name of one).

    Many OpenAI-compatible servers list their models but cannot retrieve one; then the model
    is looked up in the list, as it is for the virtual names the list adds.
    """
    real = real_model(model, services.settings)
    if real is None:
        try:
            return await services.upstream.get("models/" + quote(model, safe=""))
        except UpstreamError as exc:
            if exc.upstream_status not in (404, 405):
                raise
    listing = with_virtual_models(await services.upstream.get("models"), services.settings)
    entries = listing.get("data") if isinstance(listing, dict) else None
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict) and entry.get("id") == model:
            return entry
    raise NotFoundError(
        f"The model `{model}` does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )
