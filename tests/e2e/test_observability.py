"""Metrics and logs, seen from outside: `/metrics` of the all-in-one service and of an
executor, and JSON log lines that carry request, tenant and session ids but never user code,
keys or link signatures."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import REPO
from tests.e2e.test_two_services import free_port
from tests.proxy.conftest import KEY_A
from tests.servers import wait_until_up
from tests.upstream import Error, ScriptedUpstream, code_call, completion

AUTH = {"authorization": f"Bearer {KEY_A}"}
UPSTREAM_KEY = "sk-upstream-secret-0123456789"
MARKER = "user-code-marker-5f3a9c"


def samples(metrics: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(metrics: str, name: str, **labels: str) -> float:
    """The sum of the samples named `name` that carry `labels`."""
    return sum(
        v
        for (n, have), v in samples(metrics).items()
        if n == name and set(labels.items()) <= set(have)
    )


def test_metrics_and_json_logs(tmp_path: Path, upstream: ScriptedUpstream) -> None:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CODEPROXY_")},
        "CODEPROXY_PORT": str(port),
        "CODEPROXY_DATA_DIR": str(tmp_path / "data"),
        "CODEPROXY_API_KEYS": KEY_A,
        "CODEPROXY_UPSTREAM_BASE_URL": upstream.url + "/v1",
        "CODEPROXY_UPSTREAM_API_KEY": UPSTREAM_KEY,
        "CODEPROXY_SANDBOX_VENV": str(REPO / ".sandbox-venv"),
        "CODEPROXY_POOL_SIZE": "1",
        "CODEPROXY_MAX_SANDBOXES": "16",
        "CODEPROXY_LOG_FORMAT": "json",
        "CODEPROXY_LOG_LEVEL": "info",
        "CODEPROXY_TRANSCRIPT": "markdown",
    }
    log = tmp_path / "serve.log"
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "codeproxy.cli", "serve"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    try:
        wait_until_up(proc, url, log)

        code = f"# {MARKER}\nopen('/mnt/data/out.txt', 'w').write('x')\nprint(1 / 0)"
        upstream.push(
            completion(tool_calls=[code_call(code)]),
            completion("See sandbox:/mnt/data/out.txt"),
            Error(500, {"error": {"message": "overloaded", "type": "server_error"}}),
        )
        reply = httpx.post(
            f"{url}/v1/chat/completions",
            headers={**AUTH, "codeproxy-transcript": "markdown"},
            json={
                "model": "gpt-test",
                "messages": [{"role": "user", "content": "run"}],
                "tools": [{"type": "code_interpreter"}],
            },
            timeout=60,
        )
        assert reply.status_code == 200, reply.text
        link = re.search(
            r"\((http[^)]+signature=[^)]+)\)", reply.json()["choices"][0]["message"]["content"]
        )
        assert link is not None
        assert httpx.get(link.group(1)).content == b"x"
        failed = httpx.post(
            f"{url}/v1/chat/completions",
            headers=AUTH,
            json={"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert failed.status_code == 500

        metrics = httpx.get(f"{url}/metrics").text
        assert value(metrics, "codeproxy_executions_total", language="python", outcome="error") == 1
        assert value(metrics, "codeproxy_execution_duration_seconds_count") == 1
        assert value(metrics, "codeproxy_sandbox_events_total", event="started") >= 1
        assert value(metrics, "codeproxy_pool_capacity") == 16
        assert value(metrics, "codeproxy_upstream_errors_total", kind="5xx") == 1
        assert value(metrics, "codeproxy_upstream_request_duration_seconds_count") == 3
        chat = {"route": "create_chat_completion"}
        assert value(metrics, "codeproxy_http_requests_total", **chat, status="200") == 1
        assert value(metrics, "codeproxy_http_requests_total", **chat, status="500") == 1
        # Added latency is counted apart from the upstream's and the sandbox's time: less
        # than the whole request, by at least the sandbox run.
        added = value(metrics, "codeproxy_http_added_latency_seconds_sum", **chat)
        total = value(metrics, "codeproxy_http_request_duration_seconds_sum", **chat)
        assert 0 < added < total
    finally:
        proc.terminate()
        proc.wait(30)

    lines = log.read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    access = [r for r in records if r["logger"] == "codeproxy.access"]
    chat_line = next(r for r in access if "/v1/chat/completions 200" in r["message"])
    assert chat_line["request_id"] == reply.headers["x-request-id"]
    assert chat_line["tenant"].startswith("key-") and chat_line["session_id"].startswith("cntr_")
    text = log.read_text()
    for secret in (MARKER, KEY_A, UPSTREAM_KEY, "signature="):
        assert secret not in text, secret
