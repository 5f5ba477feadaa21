"""Queries on the containers and container files tables. Every query is scoped to one tenant."""

from typing import Literal

from sqlmodel import col, delete, select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage.models import Container, ContainerFile


async def get_container(db: AsyncSession, *, tenant: str, container_id: str) -> Container | None:
    query = select(Container).where(Container.id == container_id, Container.tenant == tenant)
    return (await db.exec(query)).first()


async def list_containers(
    db: AsyncSession,
    *,
    tenant: str,
    after: str | None,
    limit: int,
    order: Literal["asc", "desc"],
    name: str | None,
) -> tuple[list[Container], bool]:
    """One page of the tenant's containers in creation order, and whether more follow."""
    query = select(Container).where(Container.tenant == tenant)
    if name is not None:
        query = query.where(Container.name == name)
    if after is not None:
        cursor = await get_container(db, tenant=tenant, container_id=after)
        if cursor is not None:
            seq = col(Container.seq)
            query = query.where(seq > cursor.seq if order == "asc" else seq < cursor.seq)
    seq = col(Container.seq)
    query = query.order_by(seq.asc() if order == "asc" else seq.desc())
    rows = list((await db.exec(query.limit(limit + 1))).all())
    return rows[:limit], len(rows) > limit


async def delete_container(db: AsyncSession, *, container: Container) -> None:
    """The container's row and its files' rows (their bytes stay tenant files)."""
    await db.exec(delete(ContainerFile).where(col(ContainerFile.container_id) == container.id))
    await db.delete(container)
    await db.commit()


async def get_container_file(
    db: AsyncSession, *, tenant: str, container_id: str, file_id: str
) -> ContainerFile | None:
    query = select(ContainerFile).where(
        ContainerFile.id == file_id,
        ContainerFile.container_id == container_id,
        ContainerFile.tenant == tenant,
    )
    return (await db.exec(query)).first()


async def container_files(
    db: AsyncSession, *, tenant: str, container_id: str
) -> list[ContainerFile]:
    """Every file of the container, oldest first."""
    query = (
        select(ContainerFile)
        .where(ContainerFile.container_id == container_id, ContainerFile.tenant == tenant)
        .order_by(col(ContainerFile.seq).asc())
    )
    return list((await db.exec(query)).all())


async def list_container_files(
    db: AsyncSession,
    *,
    tenant: str,
    container_id: str,
    after: str | None,
    limit: int,
    order: Literal["asc", "desc"],
) -> tuple[list[ContainerFile], bool]:
    query = select(ContainerFile).where(
        ContainerFile.container_id == container_id, ContainerFile.tenant == tenant
    )
    if after is not None:
        cursor = await get_container_file(
            db, tenant=tenant, container_id=container_id, file_id=after
        )
        if cursor is not None:
            seq = col(ContainerFile.seq)
            query = query.where(seq > cursor.seq if order == "asc" else seq < cursor.seq)
    seq = col(ContainerFile.seq)
    query = query.order_by(seq.asc() if order == "asc" else seq.desc())
    rows = list((await db.exec(query.limit(limit + 1))).all())
    return rows[:limit], len(rows) > limit


async def put_container_file(db: AsyncSession, *, record: ContainerFile) -> ContainerFile:
    """Record a file at its path: a file written again at the same path keeps its id."""
    query = select(ContainerFile).where(
        ContainerFile.container_id == record.container_id,
        ContainerFile.tenant == record.tenant,
        ContainerFile.path == record.path,
    )
    existing = (await db.exec(query)).first()
    if existing is not None:
        existing.file_id = record.file_id
        existing.bytes = record.bytes
        existing.source = record.source
        existing.created_at = record.created_at
        record = existing
    db.add(record)
    await db.commit()
    await db.refresh(record)
    return record
