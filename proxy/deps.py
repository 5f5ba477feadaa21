"""What routes reach through dependency injection: the services the lifespan owns."""

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from codeproxy import logs
from executor.api import Executor
from proxy.auth import Authenticator, Tenant
from proxy.errors import ServiceUnavailableError
from proxy.metrics import ProxyMetrics
from proxy.settings import Settings
from proxy.upstream import Upstream
from storage.blobs import BlobStore


@dataclass
class Services:
    settings: Settings
    db: async_sessionmaker[AsyncSession]
    blobs: BlobStore
    upstream: Upstream
    auth: Authenticator
    executor: Executor | None
    signing_key: str
    metrics: ProxyMetrics


# Dependencies are `async def` even when they do not await: FastAPI runs plain functions in
# a thread pool, which costs more than the work itself on every request.


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_tenant(request: Request, services: ServicesDep) -> Tenant:
    tenant = await services.auth.authenticate(request.headers.get("authorization"))
    logs.tenant.set(tenant.id)
    return tenant


TenantDep = Annotated[Tenant, Depends(get_tenant)]


async def get_db(services: ServicesDep) -> AsyncIterator[AsyncSession]:
    async with services.db() as session:
        yield session


DbDep = Annotated[AsyncSession, Depends(get_db)]


async def get_executor(services: ServicesDep) -> Executor:
    if services.executor is None:
        raise ServiceUnavailableError(
            "No execution service is configured (set CODEPROXY_EXECUTOR_URL or run "
            "`codeproxy serve`).",
            code="sandbox_unavailable",
        )
    return services.executor


ExecutorDep = Annotated[Executor, Depends(get_executor)]
