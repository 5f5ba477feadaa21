"""The two-VM shape: `codeproxy executor` and `codeproxy proxy` as separate processes, joined
only by CODEPROXY_EXECUTOR_URL and the internal token."""

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import sdk_client
from tests.e2e.conftest import REPO
from tests.proxy.conftest import KEY_A
from tests.servers import wait_until_up
from tests.upstream import ScriptedUpstream, code_call, completion

TOKEN = "internal-token-" + "t" * 32


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start(args: list[str], env: dict[str, str], port: int, log: Path) -> "subprocess.Popen[bytes]":
    """Start `codeproxy <args>` listening on `port`, its output going to `log`."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("CODEPROXY_")}
    full = {
        **base,
        "CODEPROXY_HOST": "127.0.0.1",
        "CODEPROXY_PORT": str(port),
        "CODEPROXY_LOG_LEVEL": "warning",
        **env,
    }
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "codeproxy.cli", *args],
            env=full,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=log.parent,
        )


def stop(proc: "subprocess.Popen[bytes]", log: Path) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    assert proc.returncode in (0, -15), log.read_text()


@contextmanager
def service(args: list[str], env: dict[str, str], port: int, log: Path) -> Iterator[str]:
    proc = start(args, env, port, log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(proc, url, log)
        yield url
    finally:
        stop(proc, log)


@pytest.fixture
def executor_url(tmp_path: Path) -> Iterator[str]:
    env = {
        "CODEPROXY_INTERNAL_TOKEN": TOKEN,
        "CODEPROXY_DATA_DIR": str(tmp_path / "executor"),
        "CODEPROXY_SANDBOX_VENV": str(REPO / ".sandbox-venv"),
        "CODEPROXY_POOL_SIZE": "1",
    }
    with service(["executor"], env, free_port(), tmp_path / "executor.log") as url:
        yield url


def proxy_env(
    tmp_path: Path, executor_url: str, upstream: ScriptedUpstream, token: str
) -> dict[str, str]:
    return {
        "CODEPROXY_EXECUTOR_URL": executor_url,
        "CODEPROXY_INTERNAL_TOKEN": token,
        "CODEPROXY_API_KEYS": KEY_A,
        "CODEPROXY_UPSTREAM_BASE_URL": upstream.url + "/v1",
        "CODEPROXY_DATA_DIR": str(tmp_path / "proxy"),
    }


def test_proxy_and_executor_as_two_processes(
    tmp_path: Path, executor_url: str, upstream: ScriptedUpstream
) -> None:
    env = proxy_env(tmp_path, executor_url, upstream, TOKEN)
    with service(["proxy"], env, free_port(), tmp_path / "proxy.log") as url:
        client = sdk_client(url, KEY_A)
        upstream.push(
            completion(tool_calls=[code_call("import os\nprint(os.getpid() > 0)")]),
            completion("It ran."),
        )
        reply = client.chat.completions.create(
            model="gpt-test",
            messages=[{"role": "user", "content": "run"}],
            tools=[{"type": "code_interpreter"}],
        )
        assert reply.choices[0].message.content == "It ran."
        assert "True" in upstream.requests[1]["messages"][-1]["content"]
        session = httpx.post(
            f"{url}/v1/code_interpreter/sessions",
            json={},
            headers={"authorization": f"Bearer {KEY_A}"},
        ).json()
        for code, out in (("a = 20", ""), ("print(a + 22)", "42\n")):
            ran = httpx.post(
                f"{url}/v1/code_interpreter/run",
                timeout=60,
                json={"session_id": session["id"], "code": code},
                headers={"authorization": f"Bearer {KEY_A}"},
            ).json()
            assert ran["output"] == out
        # A container's options reach the executor over the internal API.
        box = client.containers.create(
            name="split", expires_after={"anchor": "last_active_at", "minutes": 3}
        )
        seen = httpx.get(
            f"{url}/v1/code_interpreter/sessions/{box.id}",
            headers={"authorization": f"Bearer {KEY_A}"},
        ).json()
        assert seen["expires_at"] - seen["last_active_at"] == 180
        upstream.push(completion(tool_calls=[code_call("print(7 * 6)")]), completion("42."))
        response = client.responses.create(
            model="gpt-test",
            input="7 * 6?",
            tools=[{"type": "code_interpreter", "container": box.id}],
            include=["code_interpreter_call.outputs"],
        )
        assert response.output[0].outputs[0].logs == "42"  # type: ignore[union-attr,index]


def test_wrong_internal_token_is_refused(
    tmp_path: Path, executor_url: str, upstream: ScriptedUpstream
) -> None:
    for headers in ({}, {"Internal-Auth-Token": "wrong"}):
        response = httpx.post(f"{executor_url}/sessions", json={}, headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_internal_token"
    # A proxy given the wrong token refuses to start, saying why.
    env = proxy_env(tmp_path, executor_url, upstream, "not-the-token")
    base = {k: v for k, v in os.environ.items() if not k.startswith("CODEPROXY_")}
    done = subprocess.run(
        [sys.executable, "-m", "codeproxy.cli", "proxy"],
        env={**base, **env, "CODEPROXY_PORT": str(free_port())},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode != 0
    assert "refused CODEPROXY_INTERNAL_TOKEN" in done.stdout + done.stderr
    assert upstream.requests == []


def test_executor_down_is_503_sandbox_unavailable(
    tmp_path: Path, upstream: ScriptedUpstream
) -> None:
    exec_env = {
        "CODEPROXY_INTERNAL_TOKEN": TOKEN,
        "CODEPROXY_DATA_DIR": str(tmp_path / "executor"),
        "CODEPROXY_SANDBOX_VENV": str(REPO / ".sandbox-venv"),
        "CODEPROXY_POOL_SIZE": "0",
    }
    with service(["executor"], exec_env, free_port(), tmp_path / "executor.log") as executor:
        env = proxy_env(tmp_path, executor, upstream, TOKEN)
        proxy = service(["proxy"], env, free_port(), tmp_path / "proxy.log")
        url = proxy.__enter__()
    try:  # the executor has stopped; the proxy still answers, with a clear 503
        response = httpx.post(
            f"{url}/v1/code_interpreter/run",
            json={"code": "print(1)"},
            headers={"authorization": f"Bearer {KEY_A}"},
            timeout=30,
        )
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "sandbox_unavailable"
        assert httpx.get(f"{url}/ready").json()["executor"]["status"] in ("degraded", "unavailable")
    finally:
        proxy.__exit__(None, None, None)


def test_executor_killed_mid_run_is_a_503_then_the_next_request_works(
    tmp_path: Path, upstream: ScriptedUpstream
) -> None:
    exec_env = {
        "CODEPROXY_INTERNAL_TOKEN": TOKEN,
        "CODEPROXY_DATA_DIR": str(tmp_path / "executor"),
        "CODEPROXY_SANDBOX_VENV": str(REPO / ".sandbox-venv"),
        "CODEPROXY_POOL_SIZE": "0",
    }
    port, log = free_port(), tmp_path / "executor.log"
    executor_url = f"http://127.0.0.1:{port}"
    executor = start(["executor"], exec_env, port, log)
    wait_until_up(executor, executor_url, log)
    env = proxy_env(tmp_path, executor_url, upstream, TOKEN)
    with service(["proxy"], env, free_port(), tmp_path / "proxy.log") as url:
        client = sdk_client(url, KEY_A, timeout=120)
        upstream.push(completion(tool_calls=[code_call("import time\ntime.sleep(600)")]))
        ask = {
            "model": "gpt-test",
            "messages": [{"role": "user", "content": "run"}],
            "tools": [{"type": "code_interpreter"}],
        }
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(client.chat.completions.create, **ask)
            while httpx.get(executor_url + "/health").json()["busy"] != 1:
                time.sleep(0.05)
            executor.kill()
            executor.wait()
            # The client hears of it at once, not after the code's 600 s.
            with pytest.raises(openai.InternalServerError) as caught:
                running.result(timeout=60)
        assert caught.value.status_code == 503
        assert caught.value.code == "sandbox_unavailable"
        assert set(caught.value.response.json()["error"]) == {"message", "type", "param", "code"}

        executor = start(["executor"], exec_env, port, log)
        try:
            wait_until_up(executor, executor_url, log)
            upstream.push(completion(tool_calls=[code_call("print(6 * 7)")]), completion("42"))
            reply = client.chat.completions.create(**ask)
            assert reply.choices[0].message.content == "42"
            assert reply.model_extra["code_interpreter"]["executions"][0]["stdout"] == "42\n"
        finally:
            stop(executor, log)
