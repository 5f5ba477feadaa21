"""Who may call: static keys, stored keys, JWTs; everything else is a 401 in OpenAI's shape."""

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest
from jose import jwt

from proxy.app import create_app
from proxy.auth import Authenticator, mint_token
from proxy.errors import AuthenticationError
from proxy.settings import Settings
from storage.db import create_engine, session_factory
from storage.keys import create_key, revoke_key
from storage.migrate import upgrade
from tests.proxy.conftest import KEY_A, sdk
from tests.servers import run_server

SIGNING_KEY = "test-signing-key-" + "x" * 32


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def assert_401(base_url: str, token: str | None) -> dict[str, object]:
    headers = {"authorization": f"Bearer {token}"} if token is not None else {}
    response = httpx.get(f"{base_url}/v1/files", headers=headers)
    assert response.status_code == 401
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert response.headers["x-request-id"].startswith("req_")
    return error


def test_missing_and_malformed_authorization(proxy_url: str) -> None:
    assert assert_401(proxy_url, None)["code"] == "missing_api_key"
    response = httpx.get(f"{proxy_url}/v1/files", headers={"authorization": "Basic abc"})
    assert response.status_code == 401


def test_wrong_key_raises_authentication_error(proxy_url: str) -> None:
    with pytest.raises(openai.AuthenticationError) as exc:
        sdk(proxy_url, "sk-wrong").files.list()
    assert exc.value.code == "invalid_api_key"


def test_valid_jwt_is_a_tenant(proxy_url: str) -> None:
    token = mint_token(SIGNING_KEY, sub="alice", ttl_minutes=5)
    assert list(sdk(proxy_url, token).files.list()) == []


def test_expired_jwt(proxy_url: str) -> None:
    token = jwt.encode({"sub": "alice", "exp": int(time.time()) - 10}, SIGNING_KEY, "HS256")
    assert "expired" in str(assert_401(proxy_url, token)["message"]).lower()


def test_jwt_without_exp(proxy_url: str) -> None:
    assert_401(proxy_url, jwt.encode({"sub": "alice"}, SIGNING_KEY, "HS256"))


def test_jwt_alg_none(proxy_url: str) -> None:
    claims = {"sub": "alice", "exp": int(time.time()) + 600}
    assert_401(proxy_url, f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}.")


def test_jwt_with_another_algorithm(proxy_url: str) -> None:
    claims = {"sub": "alice", "exp": int(time.time()) + 600}
    assert_401(proxy_url, jwt.encode(claims, SIGNING_KEY, "HS512"))


def test_jwt_signed_with_another_key(proxy_url: str) -> None:
    assert_401(proxy_url, mint_token("another-key-" + "y" * 32, sub="alice", ttl_minutes=5))


def test_tenants_from_jwt_are_isolated(proxy_url: str) -> None:
    import io

    alice = sdk(proxy_url, mint_token(SIGNING_KEY, sub="alice", ttl_minutes=5))
    bob = sdk(proxy_url, mint_token(SIGNING_KEY, sub="bob", ttl_minutes=5))
    f = alice.files.create(file=("a.txt", io.BytesIO(b"a")), purpose="assistants")
    with pytest.raises(openai.NotFoundError):
        bob.files.retrieve(f.id)
    with pytest.raises(openai.NotFoundError):
        sdk(proxy_url, KEY_A).files.retrieve(f.id)


def _cli(settings: Settings, *args: str) -> str:
    env = {
        **os.environ,
        "CODEPROXY_DATA_DIR": str(settings.data_dir),
        "CODEPROXY_DATABASE_URL": settings.database,
        "CODEPROXY_SECRET_KEY": SIGNING_KEY,
    }
    done = subprocess.run(
        [sys.executable, "-m", "codeproxy.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return done.stdout


def test_stored_key_works_until_revoked(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(key_cache_ttl=0)
    created = _cli(settings, "keys", "create", "carol")
    fields = dict(line.split(": ", 1) for line in created.strip().splitlines())
    assert fields["tenant"] == "carol"
    key = fields["key"]
    with run_server(create_app(settings)) as url:
        assert list(sdk(url, key).files.list()) == []
        listing = _cli(settings, "keys", "list")
        assert fields["id"] in listing and "active" in listing and key not in listing
        _cli(settings, "keys", "revoke", fields["id"])
        assert "revoked" in _cli(settings, "keys", "list")
        with pytest.raises(openai.AuthenticationError):
            sdk(url, key).files.list()
    # Only the hash is stored.
    assert key.encode() not in (settings.data_dir.parent / "db" / "codeproxy.db").read_bytes()


async def test_stored_keys_are_trusted_for_the_cache_ttl(database_url: str) -> None:
    """A looked-up key is not looked up again for `key_cache_ttl`: a revocation takes effect
    in every process within that time, and not before."""
    engine = create_engine(database_url)
    await upgrade(engine)
    db = session_factory(engine)
    now = [1000.0]
    auth = Authenticator(
        static_keys=[], signing_key=SIGNING_KEY, sessions=db, cache_ttl=30, clock=lambda: now[0]
    )
    try:
        async with db() as s:
            row, key = await create_key(s, tenant="erin")
        assert (await auth.authenticate(f"Bearer {key}")).id == "erin"
        async with db() as s:
            await revoke_key(s, key_id=row.id)
        now[0] += 29
        assert (await auth.authenticate(f"Bearer {key}")).id == "erin"
        now[0] += 2
        with pytest.raises(AuthenticationError):
            await auth.authenticate(f"Bearer {key}")
    finally:
        await engine.dispose()


def test_cli_token_is_accepted(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    token = _cli(settings, "token", "--sub", "dave", "--ttl", "5").strip()
    assert jwt.get_unverified_claims(token)["sub"] == "dave"
    with run_server(create_app(settings)) as url:
        assert list(sdk(url, token).files.list()) == []


def test_secret_key_is_generated_once_and_private(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "d")
    key = settings.signing_key()
    path = tmp_path / "d" / "secret_key"
    assert len(key) >= 40
    assert path.stat().st_mode & 0o777 == 0o600
    assert Settings(data_dir=tmp_path / "d").signing_key() == key
