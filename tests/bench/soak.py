"""Soak: many clients of mixed traffic against `codeproxy serve` for a long time.

Run it with `make soak` (`SOAK_SECONDS`, `SOAK_CLIENTS`) or
`python -m tests.bench.soak --seconds 600 --clients 64`. Not part of `make test`.

`codeproxy serve` runs as its own process on loopback, with the real local sandbox, in front
of a scripted OpenAI-compatible upstream in a third process (so that it and the clients do not
slow each other down). Each client loops over a mix of what real users do, each with its own
end user (the `user` field) in one of four tenants:

- a chat completion passed through (no interpreter);
- a chat completion with code, in a new conversation;
- a two-turn conversation with a `+code` model, the second turn using the first one's state;
- a streamed chat completion with code;
- files: upload, list, download, delete;
- a direct run without a session.

Every answer is checked (the code's output must come back). Reported: requests and errors by
status (the goal is no error but 429), latency p50/p99 by kind, the service's RSS at start
and end, and what was left on the host after the service stopped: sandbox processes,
cgroups, mounts and temporary directories (the goal is none).
"""

import argparse
import asyncio
import io
import multiprocessing
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict, deque
from pathlib import Path
from typing import Any

import httpx
import openai
import uvicorn

from executor.local.runtime import default_root
from tests.executor.conftest import UID_BASE, leftovers
from tests.upstream import ScriptedUpstream, code_call, completion

REPO = Path(__file__).resolve().parents[2]
KEYS = [f"soak-tenant-{n}" for n in range(4)]
MODEL = "gpt-soak"
CODE = re.compile(r"code: (.*)$", re.S)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        found: int = s.getsockname()[1]
        return found


def model(body: dict[str, Any]) -> dict[str, Any]:
    """The scripted model: runs the code a user message carries, then reports its output."""
    last = body["messages"][-1]
    if last["role"] == "tool":
        return completion(f"Output: {last['content']}")
    match = CODE.search(str(last.get("content")))
    if body.get("tools") and match:
        return completion(tool_calls=[code_call(match[1])])
    return completion("A plain answer.")


class Load:
    """The clients' record: outcomes and latencies by kind."""

    def __init__(self) -> None:
        self.outcomes: Counter[tuple[str, str]] = Counter()
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.state_lost = 0
        # The executor's health as last sampled, and the peaks seen.
        self.executor: dict[str, Any] = {}
        self.peak_waiting = 0
        self.peak_sandboxes = 0

    def record(self, kind: str, outcome: str, seconds: float) -> None:
        self.outcomes[(kind, outcome)] += 1
        self.latency[kind].append(seconds)


async def one(load: Load, kind: str, action: Any) -> None:
    started = time.perf_counter()
    try:
        await action()
        outcome = "200"
    except openai.APIStatusError as exc:
        outcome = str(exc.status_code)
    except openai.APIError as exc:  # an error event in a stream that had started
        outcome = f"in-band {exc.code or exc.type}"
    except httpx.HTTPStatusError as exc:
        outcome = str(exc.response.status_code)
    except (openai.APIConnectionError, httpx.TransportError) as exc:
        outcome = f"transport:{type(exc).__name__}"
    except AssertionError as exc:
        outcome = f"wrong answer: {exc}"[:120]
    load.record(kind, outcome, time.perf_counter() - started)


async def client(n: int, url: str, deadline: float, load: Load) -> None:
    key = KEYS[n % len(KEYS)]
    sdk = openai.AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=300)
    http = httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {key}"}, timeout=300)
    user = f"soak-user-{n}"
    rng = random.Random(n)
    ci: Any = [{"type": "code_interpreter"}]

    async def plain() -> None:
        reply = await sdk.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hello"}]
        )
        assert reply.choices[0].message.content == "A plain answer.", reply

    async def code() -> None:
        k = rng.randrange(1000)
        reply = await sdk.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": f"code: print({k} * 2)"}],
            tools=ci,
            user=user,
        )
        assert f"[stdout]\n{k * 2}" in (reply.choices[0].message.content or "")

    async def conversation() -> None:
        k = rng.randrange(1000)
        history: list[Any] = [{"role": "user", "content": f"code: soak_value = {k}"}]
        first = await sdk.chat.completions.create(
            model=MODEL + "+code", messages=history, user=user
        )
        history += [
            {"role": "assistant", "content": first.choices[0].message.content},
            {"role": "user", "content": "code: print(soak_value + 1)"},
        ]
        second = await sdk.chat.completions.create(
            model=MODEL + "+code", messages=history, user=user
        )
        text = second.choices[0].message.content or ""
        if "NameError" in text:
            load.state_lost += 1  # its session was taken over in between: said, not an error
        else:
            assert f"[stdout]\n{k + 1}" in text, text[-300:]

    async def stream() -> None:
        k = rng.randrange(1000)
        async with sdk.chat.completions.stream(
            model=MODEL,
            messages=[{"role": "user", "content": f"code: print({k} + 7)"}],
            tools=ci,
            user=user,
        ) as events:
            final = await events.get_final_completion()
        assert f"[stdout]\n{k + 7}" in (final.choices[0].message.content or "")

    async def files() -> None:
        content = rng.randbytes(rng.randrange(1_000, 100_000))
        created = await sdk.files.create(
            file=("soak.bin", io.BytesIO(content)), purpose="assistants"
        )
        await sdk.files.list(limit=5)
        downloaded = await sdk.files.content(created.id)
        assert downloaded.read() == content
        await sdk.files.delete(created.id)

    async def run() -> None:
        k = rng.randrange(1000)
        response = await http.post("/v1/code_interpreter/run", json={"code": f"print({k} - 1)"})
        response.raise_for_status()
        assert response.json()["output"] == f"{k - 1}\n", response.text

    mix = [
        ("plain", plain, 30),
        ("code", code, 20),
        ("conversation", conversation, 15),
        ("stream", stream, 10),
        ("files", files, 15),
        ("run", run, 10),
    ]
    kinds = [(name, action) for name, action, weight in mix for _ in range(weight)]
    try:
        while time.monotonic() < deadline:
            name, action = rng.choice(kinds)
            await one(load, name, action)
    finally:
        await sdk.close()
        await http.aclose()


def serve_upstream(port: int) -> None:
    """The scripted upstream, in a process of its own."""
    upstream = ScriptedUpstream(models=[MODEL])
    upstream.fallback = model
    # Its record of requests, which a test reads, must not grow for the whole run.
    upstream.requests = deque(maxlen=100)  # type: ignore[assignment]
    upstream.headers = deque(maxlen=100)  # type: ignore[assignment]
    uvicorn.run(upstream.app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def instances_of(pid: int, root: Path) -> list[str]:
    """The sandbox backend instances whose lock (`<root>/<instance>.lock`) `pid` holds."""
    inodes = set()
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if len(fields) > 5 and fields[1] == "FLOCK" and fields[4] == str(pid):
            inodes.add(int(fields[5].rsplit(":", 1)[1]))
    return [p.stem for p in root.glob("*.lock") if p.stat().st_ino in inodes]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def wait_for(url: str, alive: Any, what: str) -> None:
    deadline = time.monotonic() + 120
    while True:
        if not alive():
            raise SystemExit(f"{what} did not start")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} did not start in time")
        time.sleep(0.2)


async def drive(url: str, clients: int, seconds: float, pid: int) -> tuple[Load, list[float]]:
    load = Load()
    deadline = time.monotonic() + seconds
    samples = [rss_mb(pid)]

    async def sample() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            while True:
                await asyncio.sleep(5)
                samples.append(rss_mb(pid))
                load.executor = (await http.get("/ready")).json()["executor"]
                load.peak_waiting = max(load.peak_waiting, load.executor["waiting"])
                load.peak_sandboxes = max(load.peak_sandboxes, load.executor["sandboxes"])

    sampler = asyncio.create_task(sample())
    try:
        await asyncio.gather(*(client(n, url, deadline, load) for n in range(clients)))
    finally:
        sampler.cancel()
    samples.append(rss_mb(pid))
    return load, samples


def report(load: Load, rss: list[float], left: list[str], seconds: float, clients: int) -> int:
    total = sum(load.outcomes.values())
    by_status: Counter[str] = Counter()
    for (_kind, outcome), count in load.outcomes.items():
        by_status[outcome] += count
    print(
        f"\nsoak: {clients} clients for {seconds:.0f} s: {total} requests ({total / seconds:.1f}/s)"
    )
    print("outcomes: " + ", ".join(f"{k}: {v}" for k, v in sorted(by_status.items())))
    print(f"conversations whose second turn found its session taken over: {load.state_lost}")
    health = load.executor
    print(
        f"executor: sessions evicted {health.get('evicted')}, expired {health.get('expired')}; "
        f"peak sandboxes {load.peak_sandboxes}, peak requests waiting {load.peak_waiting}"
    )
    print(f"\n{'kind':<14} {'n':>6} {'p50 ms':>9} {'p99 ms':>9}  non-200")
    everything: list[float] = []
    for kind, samples in sorted(load.latency.items()):
        everything += samples
        bad = {o: c for (k, o), c in load.outcomes.items() if k == kind and o != "200"}
        print(
            f"{kind:<14} {len(samples):>6} {pct(samples, 0.5) * 1000:>9.0f} "
            f"{pct(samples, 0.99) * 1000:>9.0f}  {bad or ''}"
        )
    if everything:
        print(
            f"{'all':<14} {len(everything):>6} {pct(everything, 0.5) * 1000:>9.0f} "
            f"{pct(everything, 0.99) * 1000:>9.0f}"
        )
    print(
        f"\nservice RSS: start {rss[0]:.0f} MB, end {rss[-1]:.0f} MB, max {max(rss):.0f} MB, "
        f"median {statistics.median(rss):.0f} MB"
    )
    print(f"left on the host after shutdown: {left or 'nothing'}")
    errors = sum(c for o, c in by_status.items() if o not in ("200", "429"))
    return 1 if errors or left else 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.soak")
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument(
        "--max-sandboxes",
        type=int,
        default=80,
        help="sandboxes the service may hold: more than there are clients, so that a request "
        "waits for a sandbox to start, not for capacity, and few enough for a shared machine "
        "(the service's own default is sized to all of the machine's memory)",
    )
    args = parser.parse_args(argv)

    data = Path(tempfile.mkdtemp(prefix="codeproxy-soak-"))
    root = default_root()
    upstream_url = f"http://127.0.0.1:{free_port()}"
    upstream = multiprocessing.get_context("spawn").Process(
        target=serve_upstream, args=(int(upstream_url.rsplit(":", 1)[1]),), daemon=True
    )
    upstream.start()
    try:
        wait_for(upstream_url + "/v1/models", lambda: upstream.is_alive(), "the upstream")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("CODEPROXY_")}
        env |= {
            "CODEPROXY_HOST": "127.0.0.1",
            "CODEPROXY_PORT": str(port),
            "CODEPROXY_DATA_DIR": str(data),
            "CODEPROXY_API_KEYS": ",".join(KEYS),
            "CODEPROXY_UPSTREAM_BASE_URL": upstream_url + "/v1",
            "CODEPROXY_UPSTREAM_API_KEY": "sk-soak",
            "CODEPROXY_SANDBOX_VENV": str(REPO / ".sandbox-venv"),
            "CODEPROXY_SANDBOX_UID_BASE": str(UID_BASE),
            "CODEPROXY_MAX_SANDBOXES": str(args.max_sandboxes),
            "CODEPROXY_LOG_LEVEL": "warning",
        }
        log = data / "service.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "codeproxy.cli", "serve"],
                env=env,
                cwd=data,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_for(url + "/ready", lambda: proc.poll() is None, f"the service (see {log})")
            instances = instances_of(proc.pid, root)
            print(f"service pid {proc.pid}, sandbox instance(s) {instances}", flush=True)
            load, rss = asyncio.run(drive(url, args.clients, args.seconds, proc.pid))
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    finally:
        upstream.terminate()
        upstream.join(30)
    left = [x for instance in instances for x in leftovers(instance, root)]
    left += [f"file {p}" for p in (data / "sandboxes").glob("*") if p.exists()]
    left += [f"file {p}" for p in (data / "blobs" / "tmp").glob("*")]
    if proc.returncode not in (0, -signal.SIGTERM):
        left.append(f"service exit status {proc.returncode}")
    status = report(load, rss, left, args.seconds, args.clients)
    print(f"service log: {log}")
    sys.exit(status)


if __name__ == "__main__":
    main()
