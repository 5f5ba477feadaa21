"""Who is asking behind a tenant's key: the end user and the chat a chat app forwards.

A chat app serves all its users with one API key, so to codeproxy they are one tenant unless the
app says who is who. Open WebUI does with `ENABLE_FORWARD_USER_INFO_HEADERS`: an HS256 JWT in
`X-OpenWebUI-User-Jwt` (when it has `FORWARD_USER_INFO_HEADER_JWT_SECRET`), else plain
`X-OpenWebUI-User-*` headers, and `X-OpenWebUI-Chat-Id`. Other clients may send OpenAI's
`safety_identifier` or `user` field.

With `CODEPROXY_USER_JWT_SECRET` set (the app's secret), only a JWT that verifies names a user:
holders of the key cannot pose as another user. Without it, every source is taken as the app
says, as the key holder's own word (it affects only the tenant's own sandboxes).

The end user becomes a key, a hash of the tenant's name for them: raw ids (often e-mail
addresses) never reach the execution service or its logs.
"""

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jose import JWTError, jwt

from proxy.auth import verify_token
from proxy.errors import AuthenticationError
from proxy.settings import Settings

# Body fields that name the end user, most specific first (`user` is OpenAI's older name).
USER_FIELDS = ("safety_identifier", "user")


@dataclass(frozen=True, slots=True)
class Forwarded:
    """The end user (as a key) and the chat a request belongs to, when the client says."""

    user: str | None = None
    chat_id: str | None = None


def forwarded(headers: Mapping[str, str], body: Mapping[str, Any], settings: Settings) -> Forwarded:
    """What the request says about its end user and chat; 401 for a JWT that fails to verify."""
    user = _user(headers, body, settings)
    chat_id = headers.get(settings.chat_id_header) or None
    return Forwarded(user=user_key(user) if user else None, chat_id=chat_id)


def user_key(user: str) -> str:
    # Any string at all, even one with lone surrogates, names one user.
    return "user-" + hashlib.sha256(user.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _user(headers: Mapping[str, str], body: Mapping[str, Any], settings: Settings) -> str | None:
    token = headers.get(settings.user_jwt_header)
    if settings.user_jwt_secret is not None:
        if not token:
            return None
        try:
            return verify_token(settings.user_jwt_secret.get_secret_value(), token)
        except AuthenticationError as exc:
            raise AuthenticationError(
                f"Invalid {settings.user_jwt_header} header: {exc.message}",
                code="invalid_user_token",
            ) from None
    if token:
        # Without the secret the token cannot be checked; its subject is worth as much as
        # the plain header, which an app without a secret sends instead.
        try:
            sub = jwt.get_unverified_claims(token).get("sub")
        except JWTError:
            sub = None
        if isinstance(sub, str) and sub:
            return sub
    plain = headers.get(settings.user_id_header)
    if plain:
        return plain
    for field in USER_FIELDS:
        value = body.get(field)
        if isinstance(value, str) and value:
            return value
    return None
