"""Benchmark of the scaled-out shape: more proxy workers, more executors, in one run.

Run with `python -m tests.bench scale` (or `make bench`). Processes on loopback: the minimal
upstream, two `codeproxy executor`s (local sandboxes) and `codeproxy proxy` with 1 and then 2
worker processes (SQLite in a temporary folder: a passed-through completion does not touch the
database). Measured:

- passthrough throughput (requests/s) at concurrency 64 with 1 and with 2 proxy workers, the
  proxy's CPU time per request (user + system, over the master and its workers) and how many
  cores the proxy kept busy (what is left of the machine went to the load and the upstream);
- chat-loop throughput (one-round code loops/s: upstream, `print(1)` in a sandbox, upstream) at
  concurrency 8 with one and with two executors, each loop in one of 8 existing sessions.

No budgets: the numbers depend on the machine (on 2 cores the load generator, the upstream and
the executors compete with the proxy for them). Ratios against the 1-worker / 1-executor runs
of the same invocation are printed.
"""

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from tests.bench.bench_proxy import BODY, CODE_BODY, KEY, port, start

REPO = Path(__file__).resolve().parents[2]
TOKEN = "bench-internal-token-" + "x" * 24
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of `pid` and of its live children."""
    total = 0.0
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / TICKS
    return total


async def throughput(
    url: str, body: dict[str, Any], *, n: int, concurrency: int
) -> tuple[float, int]:
    """(seconds, failures) for `n` requests from `concurrency` closed-loop workers."""
    headers = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}
    data = json.dumps(body).encode()
    failures = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)) as http:

        async def worker(count: int, extra: dict[str, Any] | None) -> None:
            nonlocal failures
            payload = data if extra is None else json.dumps({**body, **extra}).encode()
            for _ in range(count):
                async with http.post(url, data=payload, headers=headers) as response:
                    await response.read()
                    failures += response.status != 200

        started = time.perf_counter()
        await asyncio.gather(*(worker(n // concurrency, None) for _ in range(concurrency)))
        return time.perf_counter() - started, failures


async def loops(proxy: str, *, sessions: list[str], rounds: int) -> tuple[float, int]:
    """(seconds, failures) for `rounds` code loops in each session, all sessions at once."""
    headers = {"authorization": f"Bearer {KEY}"}
    failures = 0
    async with httpx.AsyncClient(timeout=120, headers=headers) as http:

        async def worker(session: str) -> None:
            nonlocal failures
            body = {**CODE_BODY, "tools": [{"type": "code_interpreter", "container": session}]}
            for _ in range(rounds):
                reply = await http.post(f"{proxy}/v1/chat/completions", json=body)
                failures += reply.status_code != 200

        started = time.perf_counter()
        await asyncio.gather(*(worker(s) for s in sessions))
        return time.perf_counter() - started, failures


def spawn(args: list[str], env: dict[str, str], url: str) -> subprocess.Popen[bytes]:
    return start([sys.executable, "-m", "codeproxy.cli", *args], env, url)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run(scale: float) -> int:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CODEPROXY_")}
    base["CODEPROXY_LOG_LEVEL"] = "warning"
    work = Path(tempfile.mkdtemp(prefix="codeproxy-bench-scale-"))
    up_port = port()
    upstream = f"http://127.0.0.1:{up_port}"
    procs = [
        start(
            [sys.executable, "-m", "tests.bench.upstream_app", str(up_port)],
            base,
            upstream + "/v1/models",
        )
    ]
    executors: list[str] = []
    rows: list[str] = []
    try:
        for name in ("a", "b"):
            exec_port = port()
            url = f"http://127.0.0.1:{exec_port}"
            env = {
                **base,
                "CODEPROXY_PORT": str(exec_port),
                "CODEPROXY_INTERNAL_TOKEN": TOKEN,
                "CODEPROXY_NODE_ID": f"bench-{name}",
                "CODEPROXY_DATA_DIR": str(work / f"exec-{name}"),
                "CODEPROXY_SANDBOX_VENV": str(REPO / ".sandbox-venv"),
                "CODEPROXY_POOL_SIZE": "4",
                "CODEPROXY_MAX_SANDBOXES": "12",
                "CODEPROXY_MAX_SANDBOXES_PER_TENANT": "12",
            }
            procs.append(spawn(["executor"], env, url + "/health"))
            executors.append(url)

        def proxy_env(workers: int, nodes: list[str], name: str) -> tuple[dict[str, str], str]:
            proxy_port = port()
            return {
                **base,
                "CODEPROXY_PORT": str(proxy_port),
                "CODEPROXY_WORKERS": str(workers),
                "CODEPROXY_EXECUTOR_URL": ",".join(nodes),
                "CODEPROXY_INTERNAL_TOKEN": TOKEN,
                "CODEPROXY_API_KEYS": KEY,
                "CODEPROXY_UPSTREAM_BASE_URL": upstream + "/v1",
                "CODEPROXY_DATA_DIR": str(work / name),
            }, f"http://127.0.0.1:{proxy_port}"

        n = int(6000 * scale)
        passthrough: dict[int, tuple[float, float, float]] = {}
        for workers in (1, 2):
            env, url = proxy_env(workers, executors[:1], f"proxy-{workers}w")
            proxy = spawn(["proxy"], env, url + "/health")
            chat_url = url + "/v1/chat/completions"
            try:
                asyncio.run(throughput(chat_url, BODY, n=n // 10, concurrency=64))
                cpu_before = cpu_seconds(proxy.pid)
                seconds, failed = asyncio.run(throughput(chat_url, BODY, n=n, concurrency=64))
                cpu = cpu_seconds(proxy.pid) - cpu_before
            finally:
                stop(proxy)
            assert failed == 0, f"{failed} passthrough requests failed"
            passthrough[workers] = (n / seconds, cpu / n, cpu / seconds)

        rounds = max(1, int(6 * scale))
        chat: dict[int, float] = {}
        for count in (1, 2):
            env, url = proxy_env(2, executors[:count], f"proxy-{count}x")
            proxy = spawn(["proxy"], env, url + "/health")
            try:
                sessions = [
                    httpx.post(
                        f"{url}/v1/code_interpreter/sessions",
                        json={},
                        headers={"authorization": f"Bearer {KEY}"},
                        timeout=120,
                    ).json()["id"]
                    for _ in range(8)
                ]
                asyncio.run(loops(url, sessions=sessions, rounds=1))
                seconds, failed = asyncio.run(loops(url, sessions=sessions, rounds=rounds))
            finally:
                stop(proxy)
            assert failed == 0, f"{failed} code loops failed"
            chat[count] = len(sessions) * rounds / seconds
    finally:
        for proc in reversed(procs):
            stop(proc)

    one, two = passthrough[1], passthrough[2]
    for workers, (rate, per_request, cores) in passthrough.items():
        rows.append(
            f"passthrough, concurrency 64, {workers} worker(s): {rate:.0f} req/s, "
            f"{per_request * 1e3:.2f} ms proxy CPU per request, proxy busy {cores:.2f} cores"
        )
    rows.append(f"passthrough throughput ratio, 2 workers / 1: {two[0] / one[0]:.2f}x")
    rows.append(
        f"chat loops (code round in an existing session), concurrency 8: 1 executor "
        f"{chat[1]:.1f} loops/s; 2 executors {chat[2]:.1f} loops/s; ratio {chat[2] / chat[1]:.2f}x"
    )
    print(f"\nScaled shape on {os.cpu_count()} cores")
    for row in rows:
        print(row)
    return 0


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tests.bench scale", description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args(argv)
    sys.exit(run(args.scale))
