"""Who is calling: bearer tokens resolved to tenants.

A token is a static key from CODEPROXY_API_KEYS (each its own tenant), a key stored by
`codeproxy keys create`, or an HS256 JWT whose `sub` is the tenant. Nothing else is accepted.
"""

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from jose import JWTError, jwt
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from proxy.errors import AuthenticationError
from storage.keys import find_key, hash_key

ALGORITHM = "HS256"
KEY_CACHE_SIZE = 10_000


@dataclass(frozen=True, slots=True)
class Tenant:
    id: str


def static_tenant(key: str) -> str:
    """The tenant of a static key from CODEPROXY_API_KEYS: derived, never the key itself."""
    return "key-" + hash_key(key)[:16]


def mint_token(signing_key: str, *, sub: str, ttl_minutes: float) -> str:
    """A JWT for tenant `sub`, valid for `ttl_minutes`."""
    now = int(time.time())
    claims = {"sub": sub, "iat": now, "exp": now + int(ttl_minutes * 60)}
    return jwt.encode(claims, signing_key, algorithm=ALGORITHM)


def verify_token(signing_key: str, token: str) -> str:
    """The tenant of a valid JWT; only HS256 with `exp` and `sub` is accepted."""
    try:
        header = jwt.get_unverified_header(token)
        if header.get("alg") != ALGORITHM:
            raise AuthenticationError("Invalid token: only HS256 tokens are accepted.")
        claims = jwt.decode(
            token,
            signing_key,
            algorithms=[ALGORITHM],
            options={"require_exp": True, "require_sub": True},
        )
    except JWTError as exc:
        raise AuthenticationError(f"Invalid token: {exc}.") from None
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise AuthenticationError("Invalid token: no subject.")
    return sub


class Authenticator:
    """Resolves tokens to tenants. Stored keys found in the database are trusted for
    `cache_ttl` seconds without asking again, so a revoked key stops working within that time
    in every process."""

    def __init__(
        self,
        *,
        static_keys: list[str],
        signing_key: str,
        sessions: async_sessionmaker[AsyncSession],
        cache_ttl: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._static = {hash_key(k): static_tenant(k) for k in static_keys}
        self._signing_key = signing_key
        self._sessions = sessions
        self._ttl = cache_ttl
        self._clock = clock
        # key hash -> (tenant, trusted until); oldest first, bounded.
        self._cache: OrderedDict[str, tuple[str, float]] = OrderedDict()

    async def authenticate(self, authorization: str | None) -> Tenant:
        if not authorization:
            raise AuthenticationError(
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                code="missing_api_key",
            )
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthenticationError("Invalid Authorization header: expected 'Bearer <key>'.")
        if token.count(".") == 2:
            return Tenant(verify_token(self._signing_key, token))
        hashed = hash_key(token)
        static = self._static.get(hashed)
        if static is not None:
            return Tenant(static)
        cached = self._cache.get(hashed)
        now = self._clock()
        if cached is not None and cached[1] > now:
            return Tenant(cached[0])
        async with self._sessions() as db:
            row = await find_key(db, key=token)
        if row is None:
            self._cache.pop(hashed, None)
            raise AuthenticationError("Incorrect API key provided.")
        if self._ttl > 0:
            self._cache[hashed] = (row.tenant, now + self._ttl)
            self._cache.move_to_end(hashed)
            while len(self._cache) > KEY_CACHE_SIZE:
                self._cache.popitem(last=False)
        return Tenant(row.tenant)
