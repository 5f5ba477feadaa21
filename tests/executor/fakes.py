"""A test double of the sandbox layer: `FakeBackend` and `FakeSandbox`.

It implements `executor.backend.SandboxBackend` / `Sandbox` honestly but without isolation:
Python code runs with `exec()` in the test process, sharing one namespace per sandbox (so state
carries over between runs), and `/mnt/data` is a real directory under the test's tmp_path.
The code sees that directory's host path as `DATA_DIR`. Other languages are recorded, not run.

Directives on the first line steer a run, for tests of timing and cancellation:

    #fake: block        wait until the deadline (timed_out) or until the run is cancelled
    #fake: sleep 0.2    wait 0.2 s (cancellable), then run the rest as Python
    #fake: stubborn     ignore cancellation until the sandbox is closed (a broken backend)
"""

import ast
import asyncio
import contextlib
import io
import os
import shutil
import time
import traceback
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from executor.api import DATA_DIR
from executor.backend import SandboxBackend
from executor.errors import FileTooLarge, SandboxFileNotFound, SandboxUnavailable
from executor.languages import Language
from executor.models import ExecutionError, FileEntry, RichOutput, RunOutcome
from executor.settings import ExecutorSettings


def make_settings(**overrides: Any) -> ExecutorSettings:
    """Settings for tests: never read from the environment or a developer's .env file."""
    values: dict[str, Any] = {
        "pool_size": 0,
        # Not derived from this machine's memory: the same on every host.
        "max_sandboxes": 16,
        "acquire_timeout": 0.2,
        "reaper_interval": 0.05,
    }
    values.update(overrides)
    return ExecutorSettings(_env_file=None, **values)


@dataclass
class RunCall:
    code: str
    language: Language
    timeout: float
    max_output_bytes: int


class FakeSandbox:
    """One fake sandbox; see the module docstring for what it does and does not do."""

    def __init__(self, sandbox_id: str, data_dir: Path) -> None:
        self._id = sandbox_id
        self.data_dir = data_dir
        self.data_dir.mkdir(parents=True)
        self.namespace: dict[str, Any] = {"DATA_DIR": str(data_dir)}
        self.runs: list[RunCall] = []
        self.cancelled_runs = 0
        self.interrupts = 0
        self.closes = 0
        self.died = False
        # Runs in progress now, and the most there ever were at once.
        self.active = 0
        self.max_active = 0
        # The memory caps the service set, in order (MiB).
        self.memory_limits: list[int] = []
        self.running = asyncio.Event()
        self._closed_event = asyncio.Event()

    @property
    def id(self) -> str:
        return self._id

    @property
    def alive(self) -> bool:
        return not self.died and self.closes == 0

    @property
    def closed(self) -> bool:
        return self.closes > 0

    async def set_memory_limit(self, mb: int) -> None:
        self.memory_limits.append(mb)

    def kill(self) -> None:
        """Simulate the sandbox dying on its own (OOM, crash)."""
        self.died = True

    async def run(
        self,
        code: str,
        language: Language,
        *,
        timeout: float,
        max_output_bytes: int,
    ) -> RunOutcome:
        if not self.alive:
            raise SandboxUnavailable(f"fake sandbox {self.id} is not running")
        self.runs.append(RunCall(code, language, timeout, max_output_bytes))
        start = time.monotonic()
        first, _, rest = code.partition("\n")
        self.running.set()
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if first.strip() == "#fake: block":
                try:
                    await asyncio.wait_for(asyncio.Event().wait(), timeout)
                except TimeoutError:
                    return RunOutcome(timed_out=True, duration_ms=_ms(start))
            if first.strip() == "#fake: stubborn":
                while not self._closed_event.is_set():
                    with contextlib.suppress(asyncio.CancelledError):
                        await self._closed_event.wait()
                return RunOutcome(error=ExecutionError(name="Killed", value="closed"))
            if first.startswith("#fake: sleep"):
                await asyncio.sleep(float(first.split()[-1]))
                code = rest
        except asyncio.CancelledError:
            self.cancelled_runs += 1
            raise
        finally:
            self.active -= 1
            self.running.clear()
        if language is not Language.PYTHON:
            return RunOutcome(exit_code=0, duration_ms=_ms(start))
        outcome = self._exec(code)
        outcome.duration_ms = _ms(start)
        if len(outcome.stdout.encode()) > max_output_bytes:
            outcome.stdout = outcome.stdout.encode()[:max_output_bytes].decode(errors="ignore")
            outcome.stdout_truncated = True
        return outcome

    def _exec(self, code: str) -> RunOutcome:
        out, err = io.StringIO(), io.StringIO()
        results: list[RichOutput] = []
        error = None
        try:
            tree = ast.parse(code)
            last = tree.body[-1] if tree.body and isinstance(tree.body[-1], ast.Expr) else None
            if last is not None:
                tree.body.pop()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                exec(compile(tree, "<cell>", "exec"), self.namespace)
                if last is not None:
                    value = eval(
                        compile(ast.Expression(last.value), "<cell>", "eval"), self.namespace
                    )
                    if value is not None:
                        results.append(
                            RichOutput(kind="execute_result", data={"text/plain": repr(value)})
                        )
        except Exception as exc:
            error = ExecutionError(
                name=type(exc).__name__,
                value=str(exc),
                traceback=traceback.format_exception(exc),
            )
        return RunOutcome(
            stdout=out.getvalue(), stderr=err.getvalue(), results=results, error=error
        )

    async def write_file(
        self, path: str, chunks: AsyncIterable[bytes], *, max_bytes: int
    ) -> FileEntry:
        target = self.data_dir / path
        target.parent.mkdir(parents=True, exist_ok=True)
        size = 0
        with target.open("wb") as f:
            async for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    f.close()
                    target.unlink()
                    raise FileTooLarge(f"more than {max_bytes} bytes", param="file")
                f.write(chunk)
        return self._entry(target)

    async def read_file(self, path: str) -> AsyncIterator[bytes]:
        target = self.data_dir / path
        try:
            fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            raise SandboxFileNotFound(f"No such file: {DATA_DIR}/{path}", param="path") from None
        f = os.fdopen(fd, "rb")

        async def chunks() -> AsyncIterator[bytes]:
            with f:
                while block := f.read(64 * 1024):
                    yield block

        return chunks()

    async def list_files(self) -> list[FileEntry]:
        if not self.data_dir.exists():
            return []
        entries = []
        for root, _dirs, files in os.walk(self.data_dir):
            for name in files:
                p = Path(root) / name
                if p.is_file() and not p.is_symlink():
                    entries.append(self._entry(p))
        return sorted(entries, key=lambda e: e.path)

    def _entry(self, p: Path) -> FileEntry:
        st = p.lstat()
        rel = p.relative_to(self.data_dir).as_posix()
        return FileEntry(path=f"{DATA_DIR}/{rel}", size=st.st_size, modified=st.st_mtime)

    async def interrupt(self) -> None:
        self.interrupts += 1

    async def close(self) -> None:
        self.closes += 1
        self._closed_event.set()
        shutil.rmtree(self.data_dir, ignore_errors=True)


class FakeBackend:
    """Creates FakeSandboxes under `root`; counts and optionally fails or delays starts."""

    name = "fake"

    def __init__(self, root: Path, *, start_delay: float = 0.0) -> None:
        self.root = root
        self.start_delay = start_delay
        self.fail_creates = 0
        self.sandboxes: list[FakeSandbox] = []
        self.started = False
        self.closed = False

    @property
    def live(self) -> list[FakeSandbox]:
        """Sandboxes created and not closed yet."""
        return [s for s in self.sandboxes if not s.closed]

    async def start(self) -> None:
        self.started = True

    async def create(self) -> FakeSandbox:
        if self.start_delay:
            await asyncio.sleep(self.start_delay)
        if self.fail_creates > 0:
            self.fail_creates -= 1
            raise RuntimeError("fake sandbox start failed")
        n = len(self.sandboxes)
        sandbox = FakeSandbox(f"fake-{n}", self.root / f"sbx-{n}")
        self.sandboxes.append(sandbox)
        return sandbox

    async def aclose(self) -> None:
        self.closed = True


def _ms(start: float) -> int:
    return int((time.monotonic() - start) * 1000)


# Both classes must keep satisfying the protocols the service is written against.
_backend_check: type[SandboxBackend] = FakeBackend
