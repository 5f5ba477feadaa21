"""Benchmark of the API service's added latency, against the upstream measured directly.

Run with `python -m tests.bench proxy` (or `make bench`). Three processes on loopback: a
minimal upstream, `codeproxy serve` in front of it, and this load generator. In one run,
interleaved so drift hits both sides alike:

- a chat completion without tools sent to the upstream directly vs through codeproxy, at
  concurrency 1 and 64; the added latency is the difference of the percentiles;
- a one-round code loop (upstream call, `print(1)` in the sandbox, upstream call) through
  codeproxy; its overhead is the total minus two direct upstream calls minus the execution
  time the sandbox reports.

Budgets on a 2-core machine: p50 added ≤ 3 ms at concurrency 1, p99 added ≤ 50 ms at 64.
"""

import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx

KEY = "bench-key"
BODY = {"model": "bench", "messages": [{"role": "user", "content": "hi"}]}
CODE_BODY = {**BODY, "tools": [{"type": "code_interpreter"}]}
REPO = Path(__file__).resolve().parents[2]


def port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        found: int = s.getsockname()[1]
        return found


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def start(args: list[str], env: dict[str, str], url: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(args, env=env, cwd=REPO, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return proc
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{args} did not start")


async def measure(
    client: aiohttp.ClientSession, url: str, body: dict[str, Any], *, n: int, concurrency: int
) -> list[float]:
    """Latencies of `n` requests from `concurrency` workers in a closed loop. The load comes
    from aiohttp: httpx itself costs ~1 ms a request and saturates first at 64."""
    samples: list[float] = []
    headers = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}
    data = json.dumps(body).encode()

    async def worker(count: int) -> None:
        for _ in range(count):
            t0 = time.perf_counter()
            async with client.post(url, data=data, headers=headers) as response:
                await response.read()
                samples.append(time.perf_counter() - t0)
                assert response.status == 200, await response.text()

    await asyncio.gather(*(worker(n // concurrency) for _ in range(concurrency)))
    return samples


async def code_loops(
    client: httpx.AsyncClient, proxy: str, url: str, scale: float, *, reuse: bool
) -> tuple[list[float], list[float]]:
    """One-round code loops: in one session, or each in a new session taken from the warm
    pool (waiting for the pool to refill in between, so every start is a pool hit)."""
    headers = {"authorization": f"Bearer {KEY}"}
    session = (
        await client.post(f"{proxy}/v1/code_interpreter/sessions", json={}, headers=headers)
    ).json()["id"]
    body = {**CODE_BODY, "tools": [{"type": "code_interpreter", "container": session}]}
    await client.post(url, json=body, headers=headers)
    totals, execs = [], []
    for _ in range(int(30 * scale)):
        if not reuse:
            body = CODE_BODY
            while not await warm(client, proxy):  # noqa: ASYNC110 (another process's state)
                await asyncio.sleep(0.05)
        t0 = time.perf_counter()
        reply = await client.post(url, json=body, headers=headers)
        totals.append(time.perf_counter() - t0)
        assert reply.status_code == 200, reply.text
        [execution] = reply.json()["code_interpreter"]["executions"]
        execs.append(execution["duration_ms"] / 1000)
    return totals, execs


async def warm(client: httpx.AsyncClient, proxy: str) -> bool:
    """Whether the in-process executor has a warm sandbox ready."""
    ready = (await client.get(f"{proxy}/ready")).json()
    return bool(ready["executor"]["warm"] >= 1)


async def run(scale: float) -> int:
    up_port, proxy_port = port(), port()
    upstream = f"http://127.0.0.1:{up_port}"
    proxy = f"http://127.0.0.1:{proxy_port}"
    data = tempfile.mkdtemp(prefix="codeproxy-bench-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODEPROXY_")}
    procs = [
        start(
            [sys.executable, "-m", "tests.bench.upstream_app", str(up_port)],
            env,
            upstream + "/v1/models",
        )
    ]
    try:
        procs.append(
            start(
                [sys.executable, "-m", "codeproxy.cli", "serve"],
                {
                    **env,
                    "CODEPROXY_PORT": str(proxy_port),
                    "CODEPROXY_DATA_DIR": data,
                    "CODEPROXY_API_KEYS": KEY,
                    "CODEPROXY_UPSTREAM_BASE_URL": upstream + "/v1",
                    "CODEPROXY_LOG_LEVEL": "warning",
                    "CODEPROXY_SANDBOX_VENV": str(REPO / ".sandbox-venv"),
                    "CODEPROXY_POOL_SIZE": "1",
                },
                proxy + "/health",
            )
        )
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)) as load,
            httpx.AsyncClient(timeout=60) as client,
        ):
            direct_url = upstream + "/v1/chat/completions"
            proxy_url = proxy + "/v1/chat/completions"
            rows = []
            for concurrency, n in ((1, int(400 * scale)), (64, int(64 * 30 * scale))):
                await measure(
                    load, direct_url, BODY, n=max(concurrency, n // 10), concurrency=concurrency
                )
                await measure(
                    load, proxy_url, BODY, n=max(concurrency, n // 10), concurrency=concurrency
                )
                direct: list[float] = []
                through: list[float] = []
                for _ in range(4):  # interleaved, so drift hits both sides alike
                    direct += await measure(
                        load, direct_url, BODY, n=n // 4, concurrency=concurrency
                    )
                    through += await measure(
                        load, proxy_url, BODY, n=n // 4, concurrency=concurrency
                    )
                rows.append((concurrency, direct, through))

            loop_reused = await code_loops(client, proxy, proxy_url, scale, reuse=True)
            loop_fresh = await code_loops(client, proxy, proxy_url, scale, reuse=False)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)

    failed = 0
    print("\nAPI service: added latency against the upstream measured directly (ms)")
    print(
        f"{'concurrency':>11} {'direct p50':>10} {'proxy p50':>10} {'added p50':>10} "
        f"{'direct p99':>10} {'proxy p99':>10} {'added p99':>10}  budget"
    )
    for concurrency, direct, through in rows:
        d50, t50 = statistics.median(direct) * 1e3, statistics.median(through) * 1e3
        d99, t99 = pct(direct, 0.99) * 1e3, pct(through, 0.99) * 1e3
        if concurrency == 1:
            ok, budget = t50 - d50 <= 3, "p50 added <= 3 ms"
        else:
            ok, budget = t99 - d99 <= 50, "p99 added <= 50 ms"
        failed += not ok
        print(
            f"{concurrency:>11} {d50:>10.2f} {t50:>10.2f} {t50 - d50:>10.2f} {d99:>10.2f} "
            f"{t99:>10.2f} {t99 - d99:>10.2f}  {budget}: {'pass' if ok else 'FAIL'}"
        )
    direct_p50 = statistics.median(rows[0][1])
    for name, (totals, execs) in (
        ("same session", loop_reused),
        ("new session from the warm pool", loop_fresh),
    ):
        overhead = [t - 2 * direct_p50 - e for t, e in zip(totals, execs, strict=True)]
        print(
            f"one-round code loop, {name}: total p50 {statistics.median(totals) * 1e3:.1f} ms, "
            f"execution p50 {statistics.median(execs) * 1e3:.1f} ms, beyond upstream + "
            f"execution p50 {statistics.median(overhead) * 1e3:.1f} ms, "
            f"p99 {pct(overhead, 0.99) * 1e3:.1f} ms"
        )
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tests.bench proxy", description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args(argv)
    sys.exit(asyncio.run(run(args.scale)))
