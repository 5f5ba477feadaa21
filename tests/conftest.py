"""Fixtures shared by every test folder."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.postgres import Cluster, running_cluster
from tests.s3server import S3Server, running_server
from tests.servers import run_server
from tests.upstream import ScriptedUpstream

# Modules whose tests must pass on both databases:
#   pytestmark = pytest.mark.parametrize("database_url", DATABASES, indirect=True)
DATABASES = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def postgres() -> Iterator[Cluster]:
    """One throwaway PostgreSQL cluster for the whole test session."""
    with running_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One S3-protocol server (moto) on loopback for the whole test session."""
    with running_server() as server:
        yield server


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database: SQLite unless parametrized with "postgresql"."""
    kind = getattr(request, "param", "sqlite")
    if kind == "postgresql":
        cluster: Cluster = request.getfixturevalue("postgres")
        return cluster.create_database()
    assert kind == "sqlite", kind
    return f"sqlite+aiosqlite:///{tmp_path / 'db' / 'codeproxy.db'}"


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
