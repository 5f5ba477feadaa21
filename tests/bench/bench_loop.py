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
  as SSE;
- Assistants run: the same one-round code run as an Assistants run on one thread (one
  sandbox), from its creation to `completed`: streamed (`stream: true`, read until
  `thread.run.completed`), and polled (created, then retrieved every 10 ms until completed;
  the run executes in the background and stores every step).

Printed per form: the p50s, the ratio to the passthrough, and the cost beyond the two
upstream calls and the execution the sandbox reports (total - 2 x passthrough - execution;
the SSE, Responses and Assistants forms do not report their execution, so the JSON loop's
median stands in), and the Responses loop against the chat loop of the same form. Absolute
numbers move with the machine's load; the ratios are what to compare between two checkouts.
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
BETA = {**HEADERS, "openai-beta": "assistants=v2"}
POLL_SECONDS = 0.01


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


async def assistants_run(
    client: aiohttp.ClientSession, proxy: str, thread: str, data: bytes, stream: bool
) -> float:
    """Seconds from creating a run to seeing it `completed`."""
    url = f"{proxy}/v1/threads/{thread}/runs"
    t0 = time.perf_counter()
    async with client.post(url, data=data, headers=BETA) as response:
        raw = await response.read()
        if stream:
            elapsed = time.perf_counter() - t0
            assert b"event: thread.run.completed" in raw, raw[-500:]
            return elapsed
        run = json.loads(raw)
    while run["status"] != "completed":
        assert run["status"] in ("queued", "in_progress"), run
        await asyncio.sleep(POLL_SECONDS)
        async with client.get(f"{url}/{run['id']}", headers=BETA) as response:
            run = await response.json()
    return time.perf_counter() - t0


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
                "run polled": ("", {}, False),
                "run SSE": ("", {}, True),
            }
            thread = await assistants_thread(client, proxy)

            async def measure(name: str) -> None:
                target, body, stream = kinds[name]
                if name.startswith("run"):
                    run_body = {**thread[1], "stream": stream}
                    samples[name].append(
                        await assistants_run(
                            client, proxy, thread[0], json.dumps(run_body).encode(), stream
                        )
                    )
                    return
                elapsed, execution = await once(client, target, json.dumps(body).encode(), stream)
                samples[name].append(elapsed)
                if execution is not None:
                    execs.append(execution)

            for name in kinds:  # warm up every path
                samples[name] = []
                for _ in range(5):
                    await measure(name)
                samples[name] = []
            execs.clear()
            for _ in range(8):
                for name in kinds:
                    for _ in range(n // 8 or 1):
                        await measure(name)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)

    p50 = {name: statistics.median(values) for name, values in samples.items()}
    execution = statistics.median(execs)
    print("\nChat loop, Responses loop and Assistants run against a passthrough, one client (ms)")
    print(f"{'':>18} {'p50':>8} {'p99':>8}")
    for name, values in samples.items():
        print(f"{name:>18} {p50[name] * 1e3:>8.2f} {pct(values, 0.99) * 1e3:>8.2f}")
    print(f"{'execution':>18} {execution * 1e3:>8.2f}  (as the sandbox reports it, p50)")
    for name, form in (
        ("loop JSON", "JSON"),
        ("loop SSE", "SSE"),
        ("responses JSON", "JSON"),
        ("responses SSE", "SSE"),
        ("run polled", "JSON"),
        ("run SSE", "SSE"),
    ):
        total, passthrough = p50[name], p50[f"passthrough {form}"]
        beyond = total - 2 * passthrough - execution
        print(
            f"{name}: / passthrough {total / passthrough:.2f}; beyond two upstream calls and "
            f"the execution {beyond * 1e3:.2f} ms ({beyond / passthrough:.2f} passthroughs)"
        )
    for form in ("JSON", "SSE"):
        extra = (p50[f"responses {form}"] - p50[f"loop {form}"]) * 1e3
        print(
            f"{form}: Responses loop / chat loop "
            f"{p50[f'responses {form}'] / p50[f'loop {form}']:.2f}; beyond the chat loop "
            f"{extra:+.2f} ms"
        )
    return 0


async def assistants_thread(
    client: aiohttp.ClientSession, proxy: str
) -> tuple[str, dict[str, Any]]:
    """A thread for the runs, and the body of each run: a new question, and only that
    question as context, so every run costs the same."""
    body = {"model": "bench", "tools": [{"type": "code_interpreter"}]}
    async with client.post(f"{proxy}/v1/assistants", json=body, headers=BETA) as response:
        assistant = (await response.json())["id"]
    async with client.post(f"{proxy}/v1/threads", json={}, headers=BETA) as response:
        thread = (await response.json())["id"]
    return thread, {
        "assistant_id": assistant,
        "additional_messages": [{"role": "user", "content": "hi"}],
        "truncation_strategy": {"type": "last_messages", "last_messages": 1},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench loop", description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args(argv)
    sys.exit(asyncio.run(run(args.scale)))
