"""Liveness and readiness, without auth."""

from fastapi import APIRouter
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from proxy.deps import ServicesDep
from proxy.errors import ServiceUnavailableError

router = APIRouter(tags=["health"])


@router.get("/health")
async def health() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/ready")
async def ready(services: ServicesDep) -> dict[str, str]:
    """Readiness: the database answers."""
    try:
        async with services.db() as db:
            await db.exec(text("SELECT 1"))  # type: ignore[call-overload]
    except (SQLAlchemyError, OSError) as exc:
        raise ServiceUnavailableError(f"The database is not reachable: {exc!r}.") from exc
    return {"status": "ready"}
