"""The internal HTTP API on a real uvicorn server, driven by HttpExecutorClient and raw httpx."""

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from executor.api import TENANT_HEADER, TOKEN_HEADER, Executor
from executor.app import create_app
from executor.client import HttpExecutorClient
from executor.errors import (
    CapacityExhausted,
    FileTooLarge,
    InvalidRequest,
    SessionNotFound,
)
from executor.models import ExecuteRequest
from executor.server import check_bind, is_loopback, serve
from executor.service import ExecutorService
from executor.settings import ExecutorSettings
from tests.executor.conftest import leftovers
from tests.executor.fakes import FakeBackend, make_settings
from tests.servers import run_server, serve_app

TOKEN = "internal-test-token"


def settings_for(**overrides: Any) -> ExecutorSettings:
    return make_settings(internal_token=SecretStr(TOKEN), **overrides)


class Node:
    """One executor node: a service on a fake backend, served on loopback."""

    def __init__(self, url: str, service: ExecutorService, backend: FakeBackend) -> None:
        self.url = url
        self.service = service
        self.backend = backend


@pytest.fixture
async def start_node(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    stack: list[Any] = []

    async def start(**overrides: Any) -> Node:
        settings = settings_for(**overrides)
        backend = FakeBackend(tmp_path / f"node{len(stack)}")
        service = ExecutorService(settings, backend=backend)
        await service.start()
        server = serve_app(create_app(settings, service=service))
        url = await server.__aenter__()
        stack.append((server, service))
        return Node(url, service, backend)

    yield start
    for server, service in reversed(stack):
        await server.__aexit__(None, None, None)
        await service.aclose()


@pytest.fixture
async def node(start_node: Callable[..., Any]) -> Node:
    result: Node = await start_node()
    return result


@pytest.fixture
async def client(node: Node) -> AsyncIterator[HttpExecutorClient]:
    client = HttpExecutorClient(node.url, TOKEN)
    await client.start()
    yield client
    await client.aclose()


@pytest.fixture
async def raw(node: Node) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=node.url,
        headers={TOKEN_HEADER: TOKEN, TENANT_HEADER: "a"},
        timeout=10,
    ) as http:
        yield http


async def eventually(check: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def assert_openai_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    assert response.headers["x-request-id"]
    error: dict[str, Any] = body["error"]
    return error


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# The seed flow


async def test_seed_flow(client: HttpExecutorClient, node: Node) -> None:
    executor: Executor = client
    session = await executor.create_session("a")
    assert session.id.startswith("cntr_") and session.tenant == "a"
    first = await executor.execute("a", ExecuteRequest(session_id=session.id, code="x = 41"))
    assert first.error is None
    second = await executor.execute("a", ExecuteRequest(session_id=session.id, code="print(x + 1)"))
    assert second.stdout == "42\n"
    assert (await executor.get_session("a", session.id)).executions == 2
    assert [s.id for s in await executor.list_sessions("a")] == [session.id]
    await executor.delete_session("a", session.id)
    with pytest.raises(SessionNotFound):
        await executor.get_session("a", session.id)
    assert node.backend.live == []


async def test_files_over_http(client: HttpExecutorClient) -> None:
    session = await client.create_session("a")
    entry = await client.upload_file("a", session.id, "dir/my file.csv", chunks(b"a,b\n", b"1,2"))
    assert (entry.path, entry.size) == ("/mnt/data/dir/my file.csv", 7)
    assert [f.path for f in await client.list_files("a", session.id)] == [entry.path]
    stream = await client.read_file("a", session.id, "/mnt/data/dir/my file.csv")
    assert b"".join([c async for c in stream]) == b"a,b\n1,2"
    code = "with open(DATA_DIR + '/out.txt', 'w') as f:\n    f.write('hi')"
    result = await client.execute("a", ExecuteRequest(session_id=session.id, code=code))
    assert [(f.path, f.size) for f in result.files] == [("/mnt/data/out.txt", 2)]
    with pytest.raises(SessionNotFound):
        await client.read_file("b", session.id, "out.txt")


async def test_health(client: HttpExecutorClient) -> None:
    health = await client.health()
    assert (health.status, health.backend, health.max_sandboxes) == ("ok", "fake", 16)
    # The node names itself and this boot of it; sessions it holds are counted.
    assert health.node_id and health.boot_id and health.sessions == 0
    session = await client.create_session("a")
    assert (session.node_id, session.boot_id) == (health.node_id, health.boot_id)
    again = await client.health()
    assert (again.node_id, again.boot_id, again.sessions) == (health.node_id, health.boot_id, 1)


async def test_metrics_need_no_token(tmp_path: Path) -> None:
    settings = settings_for()
    registry = CollectorRegistry()
    service = ExecutorService(settings, backend=FakeBackend(tmp_path), registry=registry)
    await service.start()
    async with serve_app(create_app(settings, service=service, registry=registry)) as url:
        client = HttpExecutorClient(url, TOKEN)
        try:
            session = await client.create_session("a")
            await client.execute("a", ExecuteRequest(session_id=session.id, code="print(1)"))
        finally:
            await client.aclose()
        async with httpx.AsyncClient(base_url=url) as http:
            metrics = (await http.get("/metrics")).text
    await service.aclose()
    assert 'codeproxy_executions_total{language="python",outcome="ok"} 1.0' in metrics
    assert "codeproxy_pool_sessions 1.0" in metrics
    assert 'codeproxy_http_requests_total{method="POST",route="execute",status="200"}' in metrics


async def test_a_restarted_node_has_a_new_boot_id(start_node: Callable[..., Any]) -> None:
    first: Node = await start_node(node_id="node-x")
    second: Node = await start_node(node_id="node-x")
    one = HttpExecutorClient(first.url, TOKEN)
    two = HttpExecutorClient(second.url, TOKEN)
    try:
        a, b = await one.health(), await two.health()
        assert a.node_id == b.node_id == "node-x"
        assert a.boot_id != b.boot_id
    finally:
        await one.aclose()
        await two.aclose()


# Auth and errors


async def test_token_is_required(node: Node) -> None:
    async with httpx.AsyncClient(base_url=node.url, headers={TENANT_HEADER: "a"}) as http:
        missing = await http.post("/sessions")
        error = assert_openai_error(missing, 401)
        assert error["code"] == "invalid_internal_token"
        wrong = await http.post("/sessions", headers={TOKEN_HEADER: TOKEN + "x"})
        assert_openai_error(wrong, 401)
        # Routes are not revealed without the token.
        assert_openai_error(await http.get("/nope"), 401)
        health = await http.get("/health")
        assert health.status_code == 200
    assert node.backend.sandboxes == []


async def test_client_with_a_wrong_token(node: Node) -> None:
    client = HttpExecutorClient(node.url, "wrong")
    try:
        with pytest.raises(Exception) as caught:
            await client.create_session("a")
        assert getattr(caught.value, "status", None) == 401
    finally:
        await client.aclose()


async def test_unknown_session_is_404(client: HttpExecutorClient, raw: httpx.AsyncClient) -> None:
    with pytest.raises(SessionNotFound):
        await client.execute("a", ExecuteRequest(session_id="cntr_missing", code="1"))
    error = assert_openai_error(await raw.get("/sessions/cntr_missing"), 404)
    assert error["code"] == "session_not_found"
    other = await client.create_session("b")
    error = assert_openai_error(await raw.get(f"/sessions/{other.id}"), 404)
    assert error["code"] == "session_not_found"


async def test_bad_bodies_are_openai_shaped_400s(raw: httpx.AsyncClient) -> None:
    session = (await raw.post("/sessions")).json()["id"]
    error = assert_openai_error(await raw.post("/execute", json={"code": "1"}), 400)
    assert error["param"] == "session_id"
    error = assert_openai_error(
        await raw.post("/execute", json={"session_id": session, "code": ["x"]}), 400
    )
    assert error["param"] == "code"
    bad_json = await raw.post(
        "/execute", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert_openai_error(bad_json, 400)
    error = assert_openai_error(
        await raw.post("/execute", json={"session_id": session, "code": "1", "timeout": -1}), 400
    )
    assert error["param"] == "timeout"
    error = assert_openai_error(
        await raw.post("/execute", json={"session_id": session, "code": "1", "timeout": 1e6}), 400
    )
    assert error["param"] == "timeout"
    error = assert_openai_error(
        await raw.post("/execute", json={"session_id": session, "code": "1", "language": "x"}),
        400,
    )
    assert error["code"] == "unsupported_language"
    error = assert_openai_error(await raw.post("/sessions", json={"language": "cobol"}), 400)
    assert error["param"] == "language"


async def test_tenant_header_is_required(node: Node) -> None:
    async with httpx.AsyncClient(base_url=node.url, headers={TOKEN_HEADER: TOKEN}) as http:
        error = assert_openai_error(await http.post("/sessions"), 400)
        assert error["param"] == TENANT_HEADER


async def test_unknown_route_and_method(raw: httpx.AsyncClient) -> None:
    assert_openai_error(await raw.get("/nope"), 404)
    error = assert_openai_error(await raw.get("/execute"), 405)
    assert error["code"] == "method_not_allowed"


async def test_unexpected_errors_are_openai_shaped_500s(tmp_path: Path) -> None:
    class Broken(ExecutorService):
        async def list_sessions(self, tenant: str) -> Any:
            raise RuntimeError("boom")

    settings = settings_for()
    service = Broken(settings, backend=FakeBackend(tmp_path))
    await service.start()
    try:
        async with (
            serve_app(create_app(settings, service=service)) as url,
            httpx.AsyncClient() as http,
        ):
            response = await http.get(
                url + "/sessions", headers={TOKEN_HEADER: TOKEN, TENANT_HEADER: "a"}
            )
        error = assert_openai_error(response, 500)
        assert "boom" not in error["message"]
    finally:
        await service.aclose()


async def test_request_id(raw: httpx.AsyncClient) -> None:
    generated = await raw.get("/sessions")
    assert generated.headers["x-request-id"].startswith("req_")
    passed = await raw.get("/sessions", headers={"x-request-id": "req_from_proxy"})
    assert passed.headers["x-request-id"] == "req_from_proxy"


# Capacity and uploads


async def test_capacity_is_503_with_retry_after(start_node: Callable[..., Any]) -> None:
    node: Node = await start_node(max_sandboxes=1, acquire_timeout=0.1)
    async with httpx.AsyncClient(
        base_url=node.url, headers={TOKEN_HEADER: TOKEN, TENANT_HEADER: "a"}
    ) as http:
        assert (await http.post("/sessions")).status_code == 201
        full = await http.post("/sessions")
        error = assert_openai_error(full, 503)
        assert error["code"] == "sandbox_capacity"
        assert full.headers["retry-after"] == "1"
    client = HttpExecutorClient(node.url, TOKEN)
    try:
        with pytest.raises(CapacityExhausted) as caught:
            await client.create_session("b")
        assert caught.value.retry_after == 1.0
    finally:
        await client.aclose()


async def test_upload_limit(start_node: Callable[..., Any]) -> None:
    node: Node = await start_node(max_file_bytes=10)
    client = HttpExecutorClient(node.url, TOKEN)
    try:
        session = await client.create_session("a")
        with pytest.raises(FileTooLarge):
            await client.upload_file("a", session.id, "big", chunks(b"x" * 6, b"x" * 6))
        async with httpx.AsyncClient(
            base_url=node.url, headers={TOKEN_HEADER: TOKEN, TENANT_HEADER: "a"}
        ) as http:
            too_big = await http.put(f"/sessions/{session.id}/files/big", content=b"x" * 11)
            assert_openai_error(too_big, 413)
            escape = await http.put(f"/sessions/{session.id}/files/a/../../x", content=b"x")
            assert escape.status_code in (400, 404)
        with pytest.raises(InvalidRequest):
            await client.upload_file("a", session.id, "../x", chunks(b"x"))
    finally:
        await client.aclose()


# Cancellation


async def test_disconnect_cancels_the_execution(client: HttpExecutorClient, node: Node) -> None:
    session = await client.create_session("a")
    sandbox = node.backend.sandboxes[0]
    request = ExecuteRequest(session_id=session.id, code="#fake: block", timeout=60)
    run = asyncio.create_task(client.execute("a", request))
    await eventually(sandbox.running.is_set)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    await eventually(lambda: sandbox.cancelled_runs == 1)
    await eventually(lambda: not node.service._sessions[session.id].busy)
    again = await asyncio.wait_for(
        client.execute("a", ExecuteRequest(session_id=session.id, code="print(5)")), 2.0
    )
    assert again.stdout == "5\n"


async def test_read_timeout_exceeds_the_longest_execution(node: Node) -> None:
    client = HttpExecutorClient(node.url, TOKEN, request_timeout=0.2, exec_timeout_max=5)
    try:
        session = await client.create_session("a")
        code = "#fake: sleep 0.5\nprint('slow but fine')"
        result = await client.execute("a", ExecuteRequest(session_id=session.id, code=code))
        assert result.stdout == "slow but fine\n"
    finally:
        await client.aclose()


# Serving


def test_loopback_detection() -> None:
    assert all(map(is_loopback, ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "10.0.0.5", "example.org"]))


def test_serve_refuses_public_bind_without_token() -> None:
    with pytest.raises(SystemExit, match="CODEPROXY_INTERNAL_TOKEN"):
        check_bind(make_settings(host="0.0.0.0"))
    with pytest.raises(SystemExit):
        check_bind(make_settings(host="0.0.0.0", internal_token=SecretStr("")))
    check_bind(make_settings(host="0.0.0.0", internal_token=SecretStr(TOKEN)))
    check_bind(make_settings(host="127.0.0.1"))


def test_serve_checks_before_binding() -> None:
    with pytest.raises(SystemExit, match=r"Refusing to serve the executor on 0\.0\.0\.0"):
        serve(make_settings(host="0.0.0.0", port=free_port()))


def test_an_owned_service_that_cannot_start_stops_the_server() -> None:
    settings = make_settings(sandbox_backend="e2b", e2b_api_key=None)
    with pytest.raises(RuntimeError, match="failed to start"), run_server(create_app(settings)):
        pass


async def test_a_failed_start_on_the_test_loop_is_an_error() -> None:
    settings = make_settings(sandbox_backend="e2b", e2b_api_key=None)
    with pytest.raises(RuntimeError, match="failed to start"):
        async with serve_app(create_app(settings)):
            pass


async def test_no_token_configured_on_loopback(tmp_path: Path) -> None:
    settings = make_settings()
    service = ExecutorService(settings, backend=FakeBackend(tmp_path))
    await service.start()
    try:
        async with (
            serve_app(create_app(settings, service=service)) as url,
            httpx.AsyncClient(base_url=url, headers={TENANT_HEADER: "a"}) as http,
        ):
            assert (await http.post("/sessions")).status_code == 201
    finally:
        await service.aclose()


# Through the real local backend: the app owns its service, as `codeproxy executor` runs it.


# Sandbox uids of these tests, apart from test_local_backend's, so that the leftover checks of
# concurrent runs do not see each other's sandboxes.
API_UID_BASE = 320_000


def api_sandbox_processes() -> list[int]:
    """Live processes of these tests' sandbox uids.

    Zombies are left out: a killed sandbox's inner bwrap is reparented to the host's pid 1,
    which reaps it in its own time; it holds no resources.
    """
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if not API_UID_BASE <= entry.stat().st_uid < API_UID_BASE + 1000:
                    continue
                state = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    pids.append(int(entry.name))
    return pids


@pytest.fixture
def local_server(local_settings: Callable[..., ExecutorSettings]) -> Iterator[tuple[str, Any]]:
    settings = local_settings(
        internal_token=SecretStr(TOKEN),
        pool_size=1,
        exec_timeout=20,
        sandbox_uid_base=API_UID_BASE,
    )
    app = create_app(settings)
    with run_server(app) as url:
        backend = app.state.executor._backend
        runtime = (backend.host.runtime.instance, backend.host.runtime.root)
        yield url, app
    # Stopping the server closed the service it owned: nothing may be left on the host.
    assert [x for x in leftovers(*runtime) if not x.startswith("process")] == []
    assert api_sandbox_processes() == []


async def test_seed_flow_on_the_local_backend(local_server: tuple[str, Any]) -> None:
    url, _ = local_server
    client = HttpExecutorClient(url, TOKEN)
    try:
        session = await client.create_session("a")
        await client.upload_file("a", session.id, "in.csv", chunks(b"a,b\n1,2\n"))
        first = await client.execute("a", ExecuteRequest(session_id=session.id, code="x = 41"))
        assert first.error is None
        second = await client.execute(
            "a", ExecuteRequest(session_id=session.id, code="print(x + 1)")
        )
        assert second.stdout == "42\n"
        code = (
            "import csv\nrows = list(csv.reader(open('in.csv')))\n"
            "open('n.txt', 'w').write(str(len(rows)))"
        )
        made = await client.execute("a", ExecuteRequest(session_id=session.id, code=code))
        assert made.error is None, made.error
        assert [(f.path, f.size) for f in made.files] == [("/mnt/data/n.txt", 1)]
        stream = await client.read_file("a", session.id, "n.txt")
        assert b"".join([c async for c in stream]) == b"2"
        shell = await client.execute(
            "a", ExecuteRequest(session_id=session.id, code="cat n.txt", language="bash")
        )
        assert shell.stdout == "2"
        await client.delete_session("a", session.id)
        with pytest.raises(SessionNotFound):
            await client.get_session("a", session.id)
    finally:
        await client.aclose()


async def test_disconnect_interrupts_real_code(local_server: tuple[str, Any]) -> None:
    url, app = local_server
    client = HttpExecutorClient(url, TOKEN)
    try:
        session = await client.create_session("a")
        await client.execute("a", ExecuteRequest(session_id=session.id, code="x = 1"))
        busy = ExecuteRequest(
            session_id=session.id, code="import time\nwhile True: time.sleep(0.01)"
        )
        run = asyncio.create_task(client.execute("a", busy))
        await eventually(lambda: app.state.executor._sessions[session.id].busy)
        await asyncio.sleep(0.2)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        await eventually(lambda: not app.state.executor._sessions[session.id].busy, timeout=10)
        after = await client.execute("a", ExecuteRequest(session_id=session.id, code="print(x)"))
        # Interrupted, not killed: the kernel kept its state.
        assert after.stdout == "1\n" and not after.state_lost
        late = await client.execute(
            "a", ExecuteRequest(session_id=session.id, code="import time; time.sleep(5)", timeout=1)
        )
        assert late.timed_out
    finally:
        await client.aclose()
