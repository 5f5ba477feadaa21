"""The API service on loopback, without an execution service, for Assistants API tests."""

from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest

from proxy.app import create_app
from proxy.settings import Settings
from tests.proxy.conftest import sdk
from tests.servers import run_server
from tests.upstream import ScriptedUpstream


@pytest.fixture
def serve(
    make_settings: Callable[..., Settings], upstream: ScriptedUpstream
) -> Iterator[Callable[..., str]]:
    """Start the service (no execution service) with settings overrides; its URL. Several
    started in one test share the test's database."""
    servers: list[Any] = []

    def start(**overrides: Any) -> str:
        settings = make_settings(upstream_base_url=upstream.url + "/v1", **overrides)
        server = run_server(create_app(settings))
        servers.append(server)
        return server.__enter__()

    yield start
    for server in reversed(servers):
        server.__exit__(None, None, None)


@pytest.fixture
def client(serve: Callable[..., str]) -> openai.OpenAI:
    return sdk(serve(run_heartbeat_interval=0.2))
