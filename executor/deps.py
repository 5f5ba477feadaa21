"""What routes reach through dependency injection: the executor and the calling tenant.

The dependencies are `async def` although they do not await: FastAPI runs plain `def`
dependencies in a worker thread, a hop that costs more than the whole request otherwise.
"""

from typing import Annotated

from fastapi import Depends, Header, Request

from codeproxy import logs
from executor.api import TENANT_HEADER, Executor
from executor.errors import InvalidRequest

# Tenants are opaque names chosen by the proxy; the bound only keeps logs and maps sane.
MAX_TENANT_LENGTH = 256


async def get_executor(request: Request) -> Executor:
    executor: Executor = request.app.state.executor
    return executor


ExecutorDep = Annotated[Executor, Depends(get_executor)]


async def get_tenant(
    tenant: Annotated[str | None, Header(alias=TENANT_HEADER, include_in_schema=False)] = None,
) -> str:
    """The tenant the proxy acts for, from the `Codeproxy-Tenant` header."""
    if tenant is None or not tenant.strip():
        raise InvalidRequest(f"Missing required header {TENANT_HEADER}.", param=TENANT_HEADER)
    if len(tenant) > MAX_TENANT_LENGTH or not tenant.isprintable():
        raise InvalidRequest(f"Invalid {TENANT_HEADER} header.", param=TENANT_HEADER)
    logs.tenant.set(tenant)
    return tenant


TenantDep = Annotated[str, Depends(get_tenant)]
