"""Containers: executor sessions as every surface shows them, and how a conversation resumes one.

A container is an executor session (`cntr_…`), whichever surface created it. Its row in storage
keeps what must outlive the session and be seen by every API process: its name, its options
(memory cap, idle expiry) and the files in its /mnt/data, each backed by a tenant file. So a
container's files can still be downloaded after it expired, and `resume()` can give a
continued conversation a new container with the same options and the files put back.
"""

import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from executor.api import Executor, SessionInfo, SessionNotFound, SessionOptions
from proxy.errors import NotFoundError
from storage.containers import container_files, get_container, put_container_file
from storage.models import Container, ContainerFile, File

if TYPE_CHECKING:
    from proxy.coderunner import CodeRunner

# OpenAI's container sizes, as sandbox memory caps in MiB.
MEMORY_LIMITS = {"1g": 1024, "4g": 4096, "16g": 16384, "64g": 65536}
DEFAULT_MINUTES = 20

# Why the sandbox a conversation used before is gone, as the model is told.
ENDED = {
    "expired": "has expired after idling",
    "evicted": "was evicted to make room for newer sessions",
    "lost": "is gone",
}


def reset_note(ended: str) -> str:
    return (
        f"Note: the sandbox this conversation used before {ENDED[ended]}, so its Python "
        "state (variables, imports) is gone; files it had saved in /mnt/data were put back. "
        "Re-run earlier code if you need its results."
    )


RESET_NOTE = reset_note("expired")


@dataclass
class ContainerSpec:
    """How to make a new container: its name and options (None: the executor's defaults)."""

    name: str = ""
    memory_limit: str | None = None
    minutes: int | None = None

    def options(self) -> SessionOptions | None:
        if self.memory_limit is None and self.minutes is None:
            return None
        return SessionOptions(
            memory_limit_mb=MEMORY_LIMITS[self.memory_limit] if self.memory_limit else None,
            idle_timeout=self.minutes * 60.0 if self.minutes is not None else None,
        )

    @classmethod
    def of(cls, row: Container) -> "ContainerSpec":
        return cls(row.name, row.memory_limit, row.expires_after_minutes)


async def register(
    db: async_sessionmaker[AsyncSession], tenant: str, info: SessionInfo, spec: ContainerSpec
) -> Container:
    """Record a new session as a container."""
    idle = max(info.expires_at - info.last_active_at, 0.0)
    row = Container(
        id=info.id,
        tenant=tenant,
        name=spec.name,
        created_at=int(info.created_at),
        last_active_at=int(info.last_active_at),
        expires_after_minutes=spec.minutes or max(1, round(idle / 60)),
        memory_limit=spec.memory_limit,
    )
    async with db() as session:
        session.add(row)
        await session.commit()
        await session.refresh(row)
    return row


async def record_file(
    db: async_sessionmaker[AsyncSession],
    *,
    tenant: str,
    container_id: str,
    path: str,
    row: File,
    source: str,
) -> ContainerFile:
    """Record that the container holds `row`'s bytes at `path`."""
    async with db() as session:
        return await put_container_file(
            session,
            record=ContainerFile(
                id="cfile_" + secrets.token_hex(16),
                container_id=container_id,
                tenant=tenant,
                path=path,
                bytes=row.bytes,
                source=source,
                file_id=row.id,
                created_at=int(time.time()),
            ),
        )


async def require_container(
    db: async_sessionmaker[AsyncSession], executor: Executor | None, tenant: str, container_id: str
) -> tuple[Container, SessionInfo | None]:
    """The tenant's container and its live session (None once expired); 404 otherwise.

    A session no surface has recorded yet (made before containers were) is recorded now.
    """
    async with db() as session:
        row = await get_container(session, tenant=tenant, container_id=container_id)
    info = await live_session(executor, tenant, container_id)
    if row is None:
        if info is None:
            raise NotFoundError(f"Container {container_id} not found.", param="container_id")
        row = await register(db, tenant, info, ContainerSpec())
    return row, info


async def live_session(
    executor: Executor | None, tenant: str, session_id: str
) -> SessionInfo | None:
    if executor is None:
        return None
    try:
        return await executor.get_session(tenant, session_id)
    except SessionNotFound:
        return None


def public(row: Container, info: SessionInfo | None) -> dict[str, Any]:
    """OpenAI's container object."""
    return {
        "id": row.id,
        "object": "container",
        "name": row.name,
        "created_at": row.created_at,
        "status": "running" if info is not None else "expired",
        "last_active_at": int(info.last_active_at) if info is not None else row.last_active_at,
        "expires_after": {"anchor": "last_active_at", "minutes": row.expires_after_minutes},
        "memory_limit": row.memory_limit or "1g",
    }


def file_public(row: ContainerFile) -> dict[str, Any]:
    """OpenAI's container file object."""
    return {
        "id": row.id,
        "object": "container.file",
        "container_id": row.container_id,
        "created_at": row.created_at,
        "bytes": row.bytes,
        "path": row.path,
        "source": row.source,
    }


async def resume(runner: "CodeRunner", container_id: str, *, file_ids: list[str]) -> bool:
    """Attach `runner` to the tenant's container, or, if that expired, to a new container with
    its name and options and its files put back. True when it was replaced: the conversation's
    Python state is gone and the model must be told (`RESET_NOTE`). 404 if it never existed."""
    services = runner.services
    row, info = await require_container(services.db, runner.executor, runner.tenant, container_id)
    if info is not None:
        await runner.attach(session_id=container_id, file_ids=file_ids)
        return False
    async with services.db() as session:
        files = await container_files(session, tenant=runner.tenant, container_id=container_id)
    runner.spec = ContainerSpec.of(row)
    await runner.attach(
        session_id=None,
        file_ids=file_ids,
        restore={f.path: f.file_id for f in files},
        sources={f.path: f.source for f in files},
    )
    return True
