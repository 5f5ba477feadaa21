"""Liveness and readiness, without auth."""

from typing import Any

from fastapi import APIRouter
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from executor.api import ExecutorError
from proxy.deps import ServicesDep
from proxy.errors import ServiceUnavailableError

router = APIRouter(tags=["health"])


@router.get("/health")
async def health() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/ready")
async def ready(services: ServicesDep) -> dict[str, Any]:
    """Readiness: the database answers. The execution service's capacity is reported too,
    without failing readiness: requests without code still work when it is down."""
    try:
        async with services.db() as db:
            await db.exec(text("SELECT 1"))  # type: ignore[call-overload]
    except (SQLAlchemyError, OSError) as exc:
        raise ServiceUnavailableError(f"The database is not reachable: {exc!r}.") from exc
    body: dict[str, Any] = {"status": "ready"}
    if services.executor is not None:
        try:
            body["executor"] = (await services.executor.health()).model_dump()
        except ExecutorError as exc:
            body["executor"] = {"status": "unavailable", "error": exc.message}
    return body
