"""Queries on the stored responses table. Every query is scoped to one tenant."""

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage.models import StoredResponse


async def get_response(db: AsyncSession, *, tenant: str, response_id: str) -> StoredResponse | None:
    query = select(StoredResponse).where(
        StoredResponse.id == response_id, StoredResponse.tenant == tenant
    )
    return (await db.exec(query)).first()
