"""Queries on the API keys table. Keys are looked up by their SHA-256, never stored."""

import hashlib
import secrets
import time

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage.models import ApiKey

KEY_PREFIX = "cpk-"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


async def create_key(db: AsyncSession, *, tenant: str) -> tuple[ApiKey, str]:
    """Store a new key for `tenant`; returns the row and the key, which is not kept."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(
        id="key_" + secrets.token_hex(8),
        tenant=tenant,
        key_hash=hash_key(key),
        prefix=key[:10],
        created_at=int(time.time()),
    )
    db.add(row)
    await db.commit()
    return row, key


async def find_key(db: AsyncSession, *, key: str) -> ApiKey | None:
    """The unrevoked stored key matching `key`, if any."""
    query = select(ApiKey).where(ApiKey.key_hash == hash_key(key), col(ApiKey.revoked_at).is_(None))
    return (await db.exec(query)).first()


async def has_active_key(db: AsyncSession) -> bool:
    """Whether any stored key is still valid."""
    query = select(ApiKey.id).where(col(ApiKey.revoked_at).is_(None)).limit(1)
    return (await db.exec(query)).first() is not None


async def list_keys(db: AsyncSession) -> list[ApiKey]:
    return list((await db.exec(select(ApiKey).order_by(col(ApiKey.created_at)))).all())


async def revoke_key(db: AsyncSession, *, key_id: str) -> ApiKey | None:
    row = await db.get(ApiKey, key_id)
    if row is None:
        return None
    if row.revoked_at is None:
        row.revoked_at = int(time.time())
        db.add(row)
        await db.commit()
    return row
