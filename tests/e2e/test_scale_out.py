"""The scaled shape on loopback: two `codeproxy proxy` processes (one with two workers) and two
`codeproxy executor` processes, sharing a real PostgreSQL and a real S3-protocol server.

Sessions made through one proxy are used through the other; killing an executor mid-load gives
clean errors (OpenAI-shaped, never a hang, never a bare 500); the surviving node takes the new
sessions; a conversation whose node died goes on in a new sandbox with its files put back and
the model told; a restarted node (a new boot) is used again.
"""

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.chat import RESET_NOTE
from tests.e2e.conftest import REPO
from tests.e2e.test_two_services import TOKEN, free_port
from tests.postgres import Cluster
from tests.proxy.conftest import KEY_A
from tests.s3server import S3Server
from tests.upstream import ScriptedUpstream, code_call, completion

AUTH = {"authorization": f"Bearer {KEY_A}"}
UID_BASE = 330_000
DEAD_AFTER = 3.0


@dataclass
class Service:
    """One `codeproxy` process on loopback, which a test may kill and start again."""

    args: list[str]
    env: dict[str, str]
    log: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        base = {k: v for k, v in os.environ.items() if not k.startswith("CODEPROXY_")}
        env = {**base, **self.env, "CODEPROXY_HOST": "127.0.0.1", "CODEPROXY_PORT": str(self.port)}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "codeproxy.cli", *self.args],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.log.parent,
            )
        deadline = time.monotonic() + 90
        while True:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code in (200, 503):
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.1)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self.proc = None

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        assert self.proc.returncode in (0, -15), self.log.read_text()
        self.proc = None

    def sessions(self) -> int:
        """How many sessions this executor holds (its public /health)."""
        count: int = httpx.get(self.url + "/health", timeout=5).json()["sessions"]
        return count


@dataclass
class Shape:
    proxies: list[Service]
    executors: list[Service]
    upstream: ScriptedUpstream


@pytest.fixture
def shape(
    tmp_path: Path, postgres: Cluster, s3_server: S3Server, upstream: ScriptedUpstream
) -> Iterator[Shape]:
    bucket = f"scale-{os.getpid()}"
    s3_server.create_bucket(bucket)
    executors = [
        Service(
            ["executor"],
            {
                "CODEPROXY_INTERNAL_TOKEN": TOKEN,
                "CODEPROXY_NODE_ID": f"exec-{name}",
                "CODEPROXY_DATA_DIR": str(tmp_path / f"exec-{name}"),
                "CODEPROXY_SANDBOX_VENV": str(REPO / ".sandbox-venv"),
                "CODEPROXY_SANDBOX_UID_BASE": str(UID_BASE),
                "CODEPROXY_POOL_SIZE": "1",
                "CODEPROXY_MAX_SANDBOXES": "10",
                "CODEPROXY_MAX_SANDBOXES_PER_TENANT": "10",
                "CODEPROXY_LOG_LEVEL": "warning",
            },
            tmp_path / f"exec-{name}.log",
        )
        for name in ("a", "b")
    ]
    common = {
        "CODEPROXY_EXECUTOR_URL": ",".join(e.url for e in executors),
        "CODEPROXY_INTERNAL_TOKEN": TOKEN,
        "CODEPROXY_DATABASE_URL": postgres.create_database(),
        "CODEPROXY_BLOB_URL": f"s3://{bucket}/files",
        "CODEPROXY_S3_ENDPOINT_URL": s3_server.endpoint,
        **s3_server.env,
        "CODEPROXY_API_KEYS": KEY_A,
        "CODEPROXY_SECRET_KEY": "shared-secret-" + "s" * 40,
        "CODEPROXY_UPSTREAM_BASE_URL": upstream.url + "/v1",
        "CODEPROXY_NODE_HEARTBEAT_INTERVAL": "0.5",
        "CODEPROXY_NODE_DEAD_AFTER": str(DEAD_AFTER),
        "CODEPROXY_LOG_LEVEL": "warning",
    }
    proxies = [
        Service(
            ["proxy"],
            {**common, "CODEPROXY_DATA_DIR": str(tmp_path / f"proxy-{n}"), "CODEPROXY_WORKERS": w},
            tmp_path / f"proxy-{n}.log",
        )
        for n, w in ((1, "2"), (2, "1"))
    ]
    started: list[Service] = []
    try:
        for service in executors + proxies:
            service.start()
            started.append(service)
        yield Shape(proxies, executors, upstream)
    finally:
        for service in reversed(started):
            service.stop()


def run(proxy: Service, session_id: str | None, code: str, timeout: float = 60) -> httpx.Response:
    body: dict[str, Any] = {"code": code}
    if session_id is not None:
        body["session_id"] = session_id
    return httpx.post(
        f"{proxy.url}/v1/code_interpreter/run", json=body, headers=AUTH, timeout=timeout
    )


def new_session(proxy: Service) -> str:
    response = httpx.post(
        f"{proxy.url}/v1/code_interpreter/sessions", json={}, headers=AUTH, timeout=60
    )
    assert response.status_code == 200, response.text
    session_id: str = response.json()["id"]
    return session_id


def chat(proxy: Service, messages: list[dict[str, Any]]) -> dict[str, Any]:
    response = httpx.post(
        f"{proxy.url}/v1/chat/completions",
        json={"model": "gpt-test", "messages": messages, "tools": [{"type": "code_interpreter"}]},
        headers=AUTH,
        timeout=60,
    )
    assert response.status_code == 200, response.text
    reply: dict[str, Any] = response.json()
    return reply


def assert_clean_error(response: httpx.Response) -> None:
    assert response.status_code in (404, 503), response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["message"] and body["error"]["code"]


async def load(proxies: list[Service], sessions: list[str]) -> list[httpx.Response]:
    """One slow run in each session, through alternating proxies, all at once."""
    async with httpx.AsyncClient(headers=AUTH, timeout=60) as http:
        return await asyncio.gather(
            *(
                http.post(
                    f"{proxies[i % 2].url}/v1/code_interpreter/run",
                    json={"session_id": s, "code": "import time\ntime.sleep(3)\nprint('done')"},
                )
                for i, s in enumerate(sessions)
            )
        )


def test_two_proxies_two_executors(shape: Shape) -> None:
    one, two = shape.proxies
    a, b = shape.executors

    # A conversation on proxy one: state and a file in its sandbox.
    shape.upstream.push(
        completion(
            tool_calls=[code_call("secret = 41\nopen('/mnt/data/keep.txt', 'w').write('kept')")]
        ),
        completion("Stored."),
    )
    first = [{"role": "user", "content": "remember"}]
    reply = chat(one, first)["choices"][0]["message"]
    holder = a if a.sessions() >= 1 and b.sessions() == 0 else b
    assert holder.sessions() == 1

    # Its next turn through proxy two finds the same sandbox: the variable is still there.
    shape.upstream.push(completion(tool_calls=[code_call("print(secret + 1)")]), completion("42"))
    second = [*first, reply, {"role": "user", "content": "add one"}]
    reply = chat(two, second)["choices"][0]["message"]
    assert "42" in shape.upstream.requests[-1]["messages"][-1]["content"]

    # Sessions made through proxy two, used through proxy one (and the other way round).
    sessions = [new_session(two) for _ in range(4)]
    counts = [a.sessions(), b.sessions()]
    assert sum(counts) == 5 and min(counts) >= 1  # spread over both nodes
    for s in sessions:
        assert run(one, s, "x = 7").status_code == 200
        assert run(two, s, "print(x * 6)").json()["output"] == "42\n"
    uploaded = httpx.post(
        f"{one.url}/v1/files",
        headers=AUTH,
        files={"file": ("n.txt", b"shared")},
        data={"purpose": "assistants"},
    ).json()
    content = httpx.get(f"{two.url}/v1/files/{uploaded['id']}/content", headers=AUTH)
    assert content.content == b"shared"

    # Kill the conversation's node while every session runs slow code.
    async def kill_mid_load() -> list[httpx.Response]:
        running = asyncio.create_task(load(shape.proxies, sessions))
        await asyncio.sleep(1.0)
        holder.kill()
        return await running

    started = time.monotonic()
    results = asyncio.run(kill_mid_load())
    assert time.monotonic() - started < 60  # no hang
    ok = [r for r in results if r.status_code == 200]
    for response in results:
        if response.status_code == 200:
            assert response.json()["output"] == "done\n"
        else:
            assert_clean_error(response)
    assert len(ok) >= 1  # the surviving node's runs finished

    # Once the dead node is noticed, the survivor takes every new session.
    survivor = a if holder is b else b
    before = survivor.sessions()
    deadline = time.monotonic() + 30
    while True:
        response = run(two, None, "print('placed')")
        if response.status_code == 200:
            break
        assert_clean_error(response)
        assert time.monotonic() < deadline, response.text
        time.sleep(0.5)
    fresh = [run(p, None, "print('placed')") for p in (one, two, one)]
    assert all(r.json()["output"] == "placed\n" for r in fresh)
    assert survivor.sessions() >= before + 4
    # Once the node is marked dead (until then its sessions answer 503), the sessions it held
    # are lost; the others still have their state.
    deadline = time.monotonic() + 30
    while True:
        outcomes = [run(one, s, "print(x * 6)") for s in sessions]
        if all(r.status_code != 503 for r in outcomes):
            break
        for response in outcomes:
            if response.status_code != 200:
                assert_clean_error(response)
        assert time.monotonic() < deadline, "the dead node was never marked dead"
        time.sleep(0.5)
    for response in outcomes:
        if response.status_code == 200:
            assert response.json()["output"] == "42\n"
        else:
            assert response.status_code == 404 and "was lost" in response.json()["error"]["message"]
    assert {r.status_code for r in outcomes} == {200, 404}

    # The conversation goes on in a new sandbox: its file is back, the model is told.
    shape.upstream.push(
        completion(tool_calls=[code_call("print(open('/mnt/data/keep.txt').read())")]),
        completion("Still there."),
    )
    third = [*second, reply, {"role": "user", "content": "is the file there?"}]
    chat(one, third)
    sent = shape.upstream.requests[-2]["messages"]
    assert any(RESET_NOTE in str(m.get("content")) for m in sent if m["role"] == "system")
    assert "kept" in shape.upstream.requests[-1]["messages"][-1]["content"]

    # Proxy one runs two workers; whichever answers /metrics counts both workers' requests.
    for _ in range(20):  # a new connection each: the kernel spreads them over the workers
        assert httpx.get(f"{one.url}/v1/files", headers=AUTH).status_code == 200
    for _ in range(3):  # asking several times: any worker may answer
        assert counted(httpx.get(f"{one.url}/metrics").text, route="list_files") == 20.0

    # The killed node comes back (a new boot): it is used again.
    holder.start()
    deadline = time.monotonic() + 30
    while holder.sessions() == 0:
        new_session(one)
        assert time.monotonic() < deadline, "the restarted node got no session"


def counted(metrics: str, **labels: str) -> float:
    """The request count with these labels, summed over the statuses."""
    total = 0.0
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if sample.name == "codeproxy_http_requests_total" and all(
                sample.labels.get(k) == v for k, v in labels.items()
            ):
                total += sample.value
    return total
