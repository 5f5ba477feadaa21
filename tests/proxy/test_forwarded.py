"""Who is asking behind a tenant's key: which of what a chat app forwards counts, and when."""

import time
from collections.abc import Callable
from typing import Any

import pytest
from jose import jwt
from pydantic import SecretStr

from proxy.errors import AuthenticationError
from proxy.forwarded import Forwarded, forwarded, user_key
from proxy.settings import Settings

SECRET = "shared-with-the-chat-app"


def token(sub: str, *, secret: str = SECRET, ttl: int = 300) -> str:
    now = int(time.time())
    claims = {"sub": sub, "iss": "open-webui", "iat": now, "exp": now + ttl}
    return jwt.encode(claims, secret, "HS256")


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


def test_nothing_forwarded_is_nobody(settings: Settings) -> None:
    assert forwarded({}, {}, settings) == Forwarded()


def test_sources_in_order_without_a_secret(settings: Settings) -> None:
    body: dict[str, Any] = {"user": "from-user", "safety_identifier": "from-safety"}
    headers = {"X-OpenWebUI-User-Id": "from-header"}
    assert forwarded({}, {"user": "from-user"}, settings).user == user_key("from-user")
    assert forwarded({}, body, settings).user == user_key("from-safety")
    assert forwarded(headers, body, settings).user == user_key("from-header")
    # An unverifiable token counts like the plain header an app without a secret sends.
    with_token = {**headers, "X-OpenWebUI-User-Jwt": token("from-token", secret="unknown")}
    assert forwarded(with_token, body, settings).user == user_key("from-token")


def test_non_strings_and_empty_values_are_ignored(settings: Settings) -> None:
    pipeline_style = {"user": {"id": "u1", "name": "Ann"}, "safety_identifier": ""}
    assert forwarded({"X-OpenWebUI-User-Id": ""}, pipeline_style, settings).user is None
    assert forwarded({"X-OpenWebUI-User-Jwt": "not a jwt"}, {}, settings).user is None


def test_with_a_secret_only_a_verified_token_names_a_user(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(user_jwt_secret=SecretStr(SECRET))
    claims = {"X-OpenWebUI-User-Id": "mallory", "X-OpenWebUI-User-Jwt": token("alice")}
    assert forwarded(claims, {"user": "mallory"}, settings).user == user_key("alice")
    assert forwarded({"X-OpenWebUI-User-Id": "mallory"}, {"user": "mallory"}, settings).user is None
    for bad in (token("alice", secret="wrong"), token("alice", ttl=-10), "garbage"):
        with pytest.raises(AuthenticationError) as caught:
            forwarded({"X-OpenWebUI-User-Jwt": bad}, {}, settings)
        assert caught.value.code == "invalid_user_token" and caught.value.status == 401


def test_the_chat_id_and_configured_header_names(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(user_id_header="X-App-User", chat_id_header="X-App-Chat")
    got = forwarded({"X-App-User": "ann", "X-App-Chat": "c-1"}, {}, settings)
    assert got == Forwarded(user=user_key("ann"), chat_id="c-1")


def test_user_keys_are_stable_opaque_and_bounded() -> None:
    key = user_key("ann@example.com")
    assert key == user_key("ann@example.com") != user_key("bob@example.com")
    assert "ann" not in key and len(key) <= 64
