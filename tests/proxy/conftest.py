"""Fixtures for the API service: a real server on loopback, tenants' keys, settings."""

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from pydantic import SecretStr

from proxy.app import create_app
from proxy.settings import Settings
from tests.conftest import sdk_client
from tests.servers import run_server
from tests.upstream import ScriptedUpstream

KEY_A = "sk-test-tenant-a"
KEY_B = "sk-test-tenant-b"


@pytest.fixture
def make_settings(tmp_path: Path, database_url: str) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "data_dir": tmp_path / "data",
            "database_url": database_url,
            "api_keys": [SecretStr(KEY_A), SecretStr(KEY_B)],
            "upstream_base_url": "http://127.0.0.1:9/v1",
            "upstream_api_key": SecretStr("sk-upstream"),
            "secret_key": SecretStr("test-signing-key-" + "x" * 32),
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)

    return make


@pytest.fixture
def proxy_url(make_settings: Callable[..., Settings], upstream: ScriptedUpstream) -> Iterator[str]:
    settings = make_settings(upstream_base_url=upstream.url + "/v1")
    with run_server(create_app(settings)) as url:
        yield url


def sdk(base_url: str, key: str = KEY_A, **kw: Any) -> openai.OpenAI:
    return sdk_client(base_url, key, **kw)
