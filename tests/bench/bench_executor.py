"""Benchmark of the execution service on the local backend, against baselines of the same run.

Run it with `python -m tests.bench executor` (`make bench` runs every benchmark). It needs
what the local backend needs (bubblewrap, the sandbox venv; root for cgroups and per-sandbox
uids). Measured:

- baseline: spawning `/usr/bin/python3 -c pass` (what a fresh interpreter per call costs);
- warm `print(1)` round trip through the internal HTTP API: a real executor process
  (`executor.server.serve`, uvicorn, the local backend) driven by HttpExecutorClient;
- pool-hit acquisition: `create_session` with a warm sandbox ready, in-process and over HTTP;
- cold sandbox start: `LocalBackend.create()` until the kernel answers;
- idle memory per sandbox: PSS summed over the sandbox's processes (/proc/<pid>/smaps_rollup);
- 16 sessions running `print(1)` concurrently: throughput and latency under load.

It prints one table with p50/p99, ratios to the baselines, the budgets and pass/fail, and
exits non-zero if a budget is missed. The file is not named test_*: pytest never collects it.
"""

import argparse
import asyncio
import contextlib
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from executor.client import HttpExecutorClient
from executor.models import ExecuteRequest
from executor.service import ExecutorService
from executor.settings import ExecutorSettings

MS = 1000.0
MB = 1024 * 1024
STARTUP_TIMEOUT = 120.0


@dataclass
class Row:
    name: str
    samples: list[float]
    unit: str = "ms"
    budget: float | None = None
    # Which statistic the budget applies to.
    budget_on: str = "p50"
    note: str = ""

    @property
    def p50(self) -> float:
        return statistics.median(self.samples)

    @property
    def p99(self) -> float:
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]

    @property
    def passed(self) -> bool | None:
        if self.budget is None:
            return None
        value = self.p50 if self.budget_on == "p50" else max(self.samples)
        return value <= self.budget


def settings_for(data_dir: Path, **overrides: Any) -> ExecutorSettings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "pool_size": 1,
        "max_sandboxes": 20,
        "max_sandboxes_per_tenant": 20,
        "acquire_timeout": 60,
    }
    values.update(overrides)
    return ExecutorSettings(_env_file=None, **values)


async def until(check: Callable[[], Awaitable[bool]]) -> None:
    """Poll until `check` is true (the pool refills in the background)."""
    while True:
        if await check():
            return
        await asyncio.sleep(0.01)


async def _has_warm_in_process(service: ExecutorService) -> bool:
    return (await service.health()).warm >= 1


async def _has_warm_over_http(http: httpx.AsyncClient) -> bool:
    warm: int = (await http.get("/health")).json()["warm"]
    return warm >= 1


def system_python() -> str:
    """The interpreter the sandboxes run (a pyenv shim on PATH would add a shell script)."""
    return "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable


def bench_spawn(n: int) -> list[float]:
    """The baseline: a fresh interpreter per call."""
    env = {"PATH": "/usr/bin:/bin"}
    samples = []
    for _ in range(n + 2):
        start = time.perf_counter()
        subprocess.run([system_python(), "-c", "pass"], check=True, env=env)
        samples.append(time.perf_counter() - start)
    return samples[2:]


def pss_of(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1]) * 1024
    return total


def sandbox_pids(sandbox: Any) -> list[int]:
    pids = getattr(sandbox, "kernel_pids", None)
    if pids is not None:
        found: list[int] = pids()
        if found:
            return found
    uid = sandbox.uid
    return [
        int(entry.name)
        for entry in os.scandir("/proc")
        if entry.name.isdigit() and _owned_by(entry.path, uid)
    ]


def _owned_by(path: str, uid: int) -> bool:
    try:
        return os.stat(path).st_uid == uid
    except OSError:
        return False


async def bench_cold_start(data_dir: Path, n: int) -> tuple[list[float], list[float]]:
    """Cold starts of the local backend and the idle PSS of each sandbox."""
    from executor.local.backend import LocalBackend

    backend = LocalBackend(settings_for(data_dir))
    await backend.start()
    starts, memory = [], []
    try:
        for _ in range(n):
            start = time.perf_counter()
            sandbox = await backend.create()
            starts.append(time.perf_counter() - start)
            try:
                await asyncio.sleep(1.0)  # let start-up garbage settle: idle means idle
                memory.append(pss_of(sandbox_pids(sandbox)) / MB)
            finally:
                await sandbox.close()
    finally:
        await backend.aclose()
    return starts, memory


async def bench_pool_hit_in_process(data_dir: Path, n: int) -> list[float]:
    service = ExecutorService(settings_for(data_dir, pool_size=1))
    await service.start()
    samples = []
    try:
        for _ in range(n):
            await until(lambda: _has_warm_in_process(service))
            start = time.perf_counter()
            info = await service.create_session("bench")
            samples.append(time.perf_counter() - start)
            await service.delete_session("bench", info.id)
    finally:
        await service.aclose()
    return samples


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def executor_process(data_dir: Path, token: str, **env: str) -> Iterator[str]:
    """A real executor (`executor.server.serve`) in its own process; yields its URL."""
    port = free_port()
    variables = {
        **os.environ,
        "CODEPROXY_HOST": "127.0.0.1",
        "CODEPROXY_PORT": str(port),
        "CODEPROXY_INTERNAL_TOKEN": token,
        "CODEPROXY_DATA_DIR": str(data_dir),
        "CODEPROXY_MAX_SANDBOXES": "20",
        "CODEPROXY_MAX_SANDBOXES_PER_TENANT": "20",
        "CODEPROXY_ACQUIRE_TIMEOUT": "60",
        **env,
    }
    code = (
        "import logging; logging.basicConfig(level=logging.WARNING)\n"
        "from executor.server import serve\n"
        "from executor.settings import ExecutorSettings\n"
        "serve(ExecutorSettings(_env_file=None))\n"
    )
    log_path = data_dir.parent / "executor.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", code], env=variables, stdout=log, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if proc.poll() is not None:
                tail = log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"the executor exited with {proc.returncode}:\n{tail}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("the executor did not become healthy in time")
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def bench_http(url: str, token: str, n: int, per_session: int) -> dict[str, list[float]]:
    client = HttpExecutorClient(url, token)
    out: dict[str, list[float]] = {}
    try:
        # Pool hits over HTTP: wait for a warm sandbox, then take it.
        hits = []
        async with httpx.AsyncClient(base_url=url) as http:
            for _ in range(max(5, n // 20)):
                await until(lambda: _has_warm_over_http(http))
                start = time.perf_counter()
                info = await client.create_session("bench")
                hits.append(time.perf_counter() - start)
                await client.delete_session("bench", info.id)
        out["pool_hit_http"] = hits

        session = await client.create_session("bench")
        request = ExecuteRequest(session_id=session.id, code="print(1)")
        for _ in range(10):
            await client.execute("bench", request)
        warm = []
        for _ in range(n):
            start = time.perf_counter()
            result = await client.execute("bench", request)
            warm.append(time.perf_counter() - start)
            assert result.stdout == "1\n", result
        out["warm"] = warm
        await client.delete_session("bench", session.id)

        start = time.perf_counter()
        sessions = await asyncio.gather(*(client.create_session(f"t{i}") for i in range(16)))
        out["start16"] = [time.perf_counter() - start]
        for info in sessions:  # first cell of each kernel, outside the measurement
            await client.execute(info.tenant, ExecuteRequest(session_id=info.id, code="pass"))

        latencies: list[float] = []

        async def worker(tenant: str, session_id: str) -> None:
            req = ExecuteRequest(session_id=session_id, code="print(1)")
            for _ in range(per_session):
                start = time.perf_counter()
                await client.execute(tenant, req)
                latencies.append(time.perf_counter() - start)

        start = time.perf_counter()
        await asyncio.gather(*(worker(s.tenant, s.id) for s in sessions))
        out["concurrent_wall"] = [time.perf_counter() - start]
        out["concurrent"] = latencies
        await asyncio.gather(*(client.delete_session(s.tenant, s.id) for s in sessions))
    finally:
        await client.aclose()
    return out


def render(rows: list[Row], extra: list[str]) -> str:
    head = f"{'metric':<44} {'n':>5} {'p50':>10} {'p99':>10}  {'budget':<14} result"
    lines = [head, "-" * len(head)]
    for row in rows:
        budget = "" if row.budget is None else f"{row.budget_on}<={row.budget:g} {row.unit}"
        verdict = {None: "", True: "PASS", False: "FAIL"}[row.passed]
        unit = row.unit
        lines.append(
            f"{row.name:<44} {len(row.samples):>5} {row.p50:>7.2f} {unit:<2} {row.p99:>7.2f} "
            f"{unit:<2}  {budget:<14} {verdict} {row.note}".rstrip()
        )
    return "\n".join([*lines, "", *extra])


async def run(scale: float) -> int:
    n = max(20, int(200 * scale))
    token = secrets.token_urlsafe(24)
    root = Path(tempfile.mkdtemp(prefix="codeproxy-bench-"))
    try:
        spawn = [s * MS for s in bench_spawn(max(10, int(30 * scale)))]
        cold, memory = await bench_cold_start(root / "cold", max(3, int(5 * scale)))
        cold = [s * MS for s in cold]
        hits = [s * MS for s in await bench_pool_hit_in_process(root / "pool", max(5, n // 20))]
        with executor_process(root / "server", token, CODEPROXY_POOL_SIZE="2") as url:
            http = await bench_http(url, token, n, per_session=max(5, int(25 * scale)))
    finally:
        shutil.rmtree(root, ignore_errors=True)

    warm = [s * MS for s in http["warm"]]
    concurrent = [s * MS for s in http["concurrent"]]
    wall = http["concurrent_wall"][0]
    throughput = len(concurrent) / wall
    single = 1000.0 / statistics.median(warm)
    spawn_p50 = statistics.median(spawn)
    rows = [
        Row(f"baseline: spawn {system_python()} -c pass", spawn),
        Row(
            "warm print(1) round trip, internal HTTP API",
            warm,
            budget=15,
            note=f"({statistics.median(warm) / spawn_p50:.2f}x spawn)",
        ),
        Row("pool-hit acquisition, in-process", hits, budget=5),
        Row(
            "pool-hit acquisition, POST /sessions",
            [s * MS for s in http["pool_hit_http"]],
            note="(reference)",
        ),
        Row(
            "cold sandbox start (kernel ready)",
            cold,
            budget=1000,
            note=f"({statistics.median(cold) / statistics.median(hits):.0f}x pool hit, "
            f"{statistics.median(cold) / spawn_p50:.1f}x spawn)",
        ),
        Row("idle memory per sandbox (PSS)", memory, unit="MB", budget=60, budget_on="max"),
        Row(
            "16 sessions x print(1) concurrently, latency",
            concurrent,
            note=f"({statistics.median(concurrent) / statistics.median(warm):.1f}x unloaded)",
        ),
    ]
    extra = [
        f"16 concurrent sessions: {throughput:.0f} executions/s "
        f"({throughput / single:.1f}x one session's sequential {single:.0f}/s; "
        f"{os.cpu_count()} CPUs)",
        f"16 sessions started at once (at most 2 from the warm pool): {http['start16'][0]:.2f} s",
    ]
    print(render(rows, extra))
    return 1 if any(row.passed is False for row in rows) else 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench executor", description=__doc__)
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply the number of iterations (default 1)"
    )
    args = parser.parse_args(argv)
    sys.exit(asyncio.run(run(args.scale)))
