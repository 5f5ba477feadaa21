"""Fixtures shared by every test folder."""

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.servers import run_server
from tests.upstream import ScriptedUpstream


@pytest.fixture
def upstream() -> Iterator[ScriptedUpstream]:
    """A scripted OpenAI-compatible upstream on loopback; its base URL is `upstream.url`."""
    fake = ScriptedUpstream()
    with run_server(fake.app) as url:
        fake.url = url
        yield fake


_clients: list[openai.OpenAI] = []


def sdk_client(base_url: str, key: str, **kw: Any) -> openai.OpenAI:
    """An OpenAI SDK client for `base_url` (without /v1), closed after the test."""
    kw.setdefault("max_retries", 0)
    client = openai.OpenAI(base_url=base_url + "/v1", api_key=key, **kw)
    _clients.append(client)
    return client


@pytest.fixture(autouse=True)
def _close_sdk_clients() -> Iterator[None]:
    yield
    while _clients:
        _clients.pop().close()
