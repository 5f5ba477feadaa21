"""Fixtures for the API service: a real server on loopback and a scripted upstream."""

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import openai
import pytest
import uvicorn
from pydantic import SecretStr

from proxy.app import create_app
from proxy.settings import Settings
from tests.upstream import ScriptedUpstream

KEY_A = "sk-test-tenant-a"
KEY_B = "sk-test-tenant-b"


@contextmanager
def run_server(app: Any) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on a free loopback port; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@pytest.fixture
def upstream() -> Iterator[ScriptedUpstream]:
    fake = ScriptedUpstream()
    with run_server(fake.app) as url:
        fake.url = url  # type: ignore[attr-defined]
        yield fake


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "data_dir": tmp_path / "data",
            "api_keys": [SecretStr(KEY_A), SecretStr(KEY_B)],
            "upstream_base_url": "http://127.0.0.1:9/v1",
            "upstream_api_key": SecretStr("sk-upstream"),
            "secret_key": SecretStr("test-signing-key-" + "x" * 32),
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def proxy_url(make_settings: Callable[..., Settings], upstream: ScriptedUpstream) -> Iterator[str]:
    settings = make_settings(upstream_base_url=upstream.url + "/v1")  # type: ignore[attr-defined]
    with run_server(create_app(settings)) as url:
        yield url


def sdk(base_url: str, key: str = KEY_A, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url + "/v1", api_key=key, max_retries=0, **kw)
