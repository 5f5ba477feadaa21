"""Benchmark of what the code-interpreter loop itself costs, as ratios to a passthrough.

Run with `python -m tests.bench loop` (or `make bench`). Three processes on loopback: the
minimal upstream of `upstream_app.py`, `codeproxy serve` in front of it (the real local
sandbox) and this client, one request at a time so that latency is what is measured. In
interleaved batches, so drift hits every kind alike:

- passthrough: a chat completion without tools through codeproxy, as JSON and as SSE;
- loop: a one-round code loop in one session (upstream call answered with a `print(1)`
  call, the run, upstream call answered with text), as JSON and as SSE;
- responses: the same loop through the Responses API (`POST /v1/responses`, the same container,
  bridged to the upstream's chat completions, the response stored as by default), as JSON and
  as SSE.

Printed per form: the p50s, the loop/passthrough ratio, and the loop's own cost beyond its two
upstream calls and the execution the sandbox reports (loop - 2 x passthrough - execution; the
SSE form does not report its execution, so the JSON form's median stands in), for chat and for
the Responses API. Absolute numbers move with the machine's load; the ratios are what to
compare between two checkouts, and the Responses loop against the chat loop of the same run.
"""

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any

import aiohttp

from tests.bench.bench_proxy import BODY, KEY, REPO, pct, port, start

HEADERS = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}


async def once(
    client: aiohttp.ClientSession, url: str, data: bytes, stream: bool
) -> tuple[float, float | None]:
    """(latency, execution seconds the sandbox reported, if the answer says)."""
    t0 = time.perf_counter()
    async with client.post(url, data=data, headers=HEADERS) as response:
        raw = await response.read()
        elapsed = time.perf_counter() - t0
    assert response.status == 200, raw[:500]
    if url.endswith("/responses"):
        done = b"event: response.completed\n" if stream else b'"status":"completed"'
        assert done in raw and b"code_interpreter_call" in raw, raw[-500:]
        return elapsed, None
    if stream:
        assert raw.endswith(b"data: [DONE]\n\n"), raw[-500:]
        return elapsed, None
    executions = json.loads(raw).get("code_interpreter", {}).get("executions", [])
    return elapsed, executions[0]["duration_ms"] / 1000 if executions else None


async def run(scale: float) -> int:
    up_port, proxy_port = port(), port()
    upstream = f"http://127.0.0.1:{up_port}"
    proxy = f"http://127.0.0.1:{proxy_port}"
    data_dir = tempfile.mkdtemp(prefix="codeproxy-bench-loop-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODEPROXY_")}
    procs = [
        start(
            [sys.executable, "-m", "tests.bench.upstream_app", str(up_port)],
            env,
            upstream + "/v1/models",
        )
    ]
    samples: dict[str, list[float]] = {}
    execs: list[float] = []
    try:
        procs.append(
            start(
                [sys.executable, "-m", "codeproxy.cli", "serve"],
                {
                    **env,
                    "CODEPROXY_PORT": str(proxy_port),
                    "CODEPROXY_DATA_DIR": data_dir,
                    "CODEPROXY_API_KEYS": KEY,
                    "CODEPROXY_UPSTREAM_BASE_URL": upstream + "/v1",
                    "CODEPROXY_LOG_LEVEL": "warning",
                    "CODEPROXY_SANDBOX_VENV": str(REPO / ".sandbox-venv"),
                    "CODEPROXY_POOL_SIZE": "1",
                },
                proxy + "/health",
            )
        )
        url = proxy + "/v1/chat/completions"
        responses_url = proxy + "/v1/responses"
        n = max(10, int(50 * scale))
        async with aiohttp.ClientSession() as client:
            async with client.post(
                f"{proxy}/v1/code_interpreter/sessions", data=b"{}", headers=HEADERS
            ) as created:
                session = (await created.json())["id"]
            tools = [{"type": "code_interpreter", "container": session}]
            loop_body = {**BODY, "tools": tools}
            responses_body = {"model": BODY["model"], "input": "hi", "tools": tools}
            kinds: dict[str, tuple[str, dict[str, Any], bool]] = {
                "passthrough JSON": (url, BODY, False),
                "loop JSON": (url, loop_body, False),
                "responses JSON": (responses_url, responses_body, False),
                "passthrough SSE": (url, {**BODY, "stream": True}, True),
                "loop SSE": (url, {**loop_body, "stream": True}, True),
                "responses SSE": (responses_url, {**responses_body, "stream": True}, True),
            }
            for name, (target, body, stream) in kinds.items():  # warm up every path
                for _ in range(5):
                    await once(client, target, json.dumps(body).encode(), stream)
                samples[name] = []
            for _ in range(8):
                for name, (target, body, stream) in kinds.items():
                    data = json.dumps(body).encode()
                    for _ in range(n // 8 or 1):
                        elapsed, execution = await once(client, target, data, stream)
                        samples[name].append(elapsed)
                        if execution is not None:
                            execs.append(execution)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)

    p50 = {name: statistics.median(values) for name, values in samples.items()}
    execution = statistics.median(execs)
    print("\nLoop cost against a passthrough of the same form, one client (ms)")
    print(f"{'':>18} {'p50':>8} {'p99':>8}")
    for name, values in samples.items():
        print(f"{name:>18} {p50[name] * 1e3:>8.2f} {pct(values, 0.99) * 1e3:>8.2f}")
    print(f"{'execution':>18} {execution * 1e3:>8.2f}  (as the sandbox reports it, p50)")
    for form in ("JSON", "SSE"):
        passthrough = p50[f"passthrough {form}"]
        beyond: dict[str, float] = {}
        for surface, name in (("chat", f"loop {form}"), ("responses", f"responses {form}")):
            loop = p50[name]
            beyond[surface] = loop - 2 * passthrough - execution
            print(
                f"{form} {surface}: loop / passthrough {loop / passthrough:.2f}; loop beyond "
                f"two upstream calls and the execution {beyond[surface] * 1e3:.2f} ms "
                f"({beyond[surface] / passthrough:.2f} passthroughs)"
            )
        ratio = p50[f"responses {form}"] / p50[f"loop {form}"]
        extra = (beyond["responses"] - beyond["chat"]) * 1e3
        print(
            f"{form}: Responses loop / chat loop {ratio:.2f}; beyond the chat loop {extra:+.2f} ms"
        )
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench loop", description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args(argv)
    sys.exit(asyncio.run(run(args.scale)))
