"""The whole service on loopback: a real proxy server, the real local sandbox in-process, and
a scripted OpenAI-compatible upstream."""

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
from pydantic import SecretStr

from executor.service import ExecutorService
from executor.settings import ExecutorSettings
from proxy.app import create_app
from proxy.settings import Settings
from tests.conftest import sdk_client
from tests.proxy.conftest import KEY_A, KEY_B
from tests.servers import run_server
from tests.upstream import ScriptedUpstream

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Stack:
    url: str
    upstream: ScriptedUpstream
    settings: Settings
    executor: ExecutorService

    def client(self, key: str = KEY_A, **kw: Any) -> openai.OpenAI:
        return sdk_client(self.url, key, **kw)


def executor_settings(data_dir: Path, **overrides: Any) -> ExecutorSettings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "sandbox_venv": REPO / ".sandbox-venv",
        "pool_size": 1,
        "exec_timeout": 20,
        "interrupt_grace": 1,
    }
    values.update(overrides)
    return ExecutorSettings(_env_file=None, **values)


def proxy_settings(data_dir: Path, upstream_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "api_keys": [SecretStr(KEY_A), SecretStr(KEY_B)],
        "upstream_base_url": upstream_url,
        "upstream_api_key": SecretStr("sk-upstream-secret"),
        "secret_key": SecretStr("e2e-signing-key-" + "z" * 32),
        "keepalive_interval": 0.2,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


@pytest.fixture
def make_stack(
    tmp_path: Path, upstream: ScriptedUpstream, database_url: str
) -> Iterator[Callable[..., Stack]]:
    servers: list[Any] = []

    def make(executor: dict[str, Any] | None = None, **overrides: Any) -> Stack:
        n = len(servers)
        service = ExecutorService(executor_settings(tmp_path / f"executor{n}", **(executor or {})))
        upstream_url = overrides.pop("upstream_base_url", upstream.url + "/v1")
        if n == 0:  # the first stack gets the test's database; later ones SQLite of their own
            overrides.setdefault("database_url", database_url)
        settings = proxy_settings(tmp_path / f"proxy{n}", upstream_url, **overrides)
        server = run_server(create_app(settings, executor=service))
        url = server.__enter__()
        servers.append(server)
        return Stack(url, upstream, settings, service)

    yield make
    for server in reversed(servers):
        server.__exit__(None, None, None)


@pytest.fixture
def stack(make_stack: Callable[..., Stack]) -> Stack:
    return make_stack()
