"""One E2B sandbox (see the package docstring for how it lines up with the local backend)."""

import asyncio
import contextlib
import json
import logging
import shlex
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from typing import Any

from executor.api import DATA_DIR
from executor.e2b.errors import CommandExit, translated
from executor.e2b.results import Results, execution_error, outcome
from executor.errors import (
    ExecutorError,
    FileTooLarge,
    SandboxFileNotFound,
    SandboxRequestFailed,
    SandboxUnavailable,
)
from executor.languages import Language
from executor.models import ExecutionError, FileEntry, RunOutcome
from executor.outcomes import output_limit_error, timeout_error
from executor.output import FLOOD_FACTOR, CappedStream
from executor.settings import ExecutorSettings

logger = logging.getLogger(__name__)

# Explicit bounds for every SDK call (the SDK's defaults are not ours to rely on).
REQUEST_TIMEOUT = 30.0
TRANSFER_TIMEOUT = 600.0
# Extra lifetime beyond an idle session and its longest run, so E2B never kills a sandbox
# that a session still uses.
LIFETIME_MARGIN = 300.0
# A sandbox closer than this to its E2B deadline counts as dead (a run might outlive it).
DEADLINE_SAFETY = 30.0
# A one-shot command's result may trail its in-VM deadline by this much (stream, network).
COMMAND_SLACK = 1.0
# The shortest deadline handed to coreutils `timeout`, whose 0 would mean "none".
MIN_COMMAND_SECONDS = 0.1
# After a cut call, E2B's server interrupts the kernel; a cell sent before that interrupt
# lands is aborted by the kernel and never answered. Tens of ms inside the VM: wait longer.
ABORT_GRACE = 0.5
# How long a kernel may take to answer after an interrupt before its context is restarted
# (the interrupt grace, but never less: a network round trip is part of it).
MIN_PROBE_SECONDS = 1.0
LIST_DEPTH = 32
SCRATCH = "/tmp/codeproxy"

_KERNEL_LANGUAGES = {Language.PYTHON: "python", Language.JAVASCRIPT: "javascript"}
# Run first in a (re)started kernel: /mnt/data exists, is writable by commands, is the cwd.
_PREPARE = {
    "python": (
        "import os as _os; "
        f"_os.makedirs({DATA_DIR!r}, exist_ok=True); _os.chmod({DATA_DIR!r}, 0o777); "
        f"_os.makedirs({SCRATCH!r}, exist_ok=True); _os.chdir({DATA_DIR!r}); del _os"
    ),
    "javascript": f"process.chdir({json.dumps(DATA_DIR)})",
}
# A cell that does nothing, to see whether a kernel answers.
_PROBE = {"python": "pass", "javascript": "undefined"}
_COMPILERS = {
    Language.C: ("c", "gcc -O2 -std=gnu17 -o {exe} {src} -lm"),
    Language.CPP: ("cpp", "g++ -O2 -std=gnu++17 -o {exe} {src} -lm"),
}
_TIMEOUT_EXIT = 124
_KILLED_EXIT = 137
# What `_deadline` returns for a call it cut (the reason is in `_cut_reason`).
_CUT: Any = object()


class E2BSandbox:
    """One E2B sandbox; implements executor.backend.Sandbox."""

    def __init__(self, sbx: Any, sdk: Any, settings: ExecutorSettings, lifetime: float) -> None:
        self._sbx = sbx
        self._sdk = sdk
        self._settings = settings
        self._lifetime = lifetime
        self._expires = time.monotonic() + lifetime
        self._dead = False
        self._closed = False
        self._kernels_ready: set[str] = set()
        self._call: asyncio.Future[Any] | None = None
        self._cut_reason = ""
        # Checks the kernel after a call our caller cut; the next run waits for it.
        self._settling: asyncio.Task[bool] | None = None

    @property
    def id(self) -> str:
        """E2B's sandbox id."""
        return str(self._sbx.sandbox_id)

    @property
    def alive(self) -> bool:
        """False once dead or closed, or too close to E2B's deadline for a run to finish."""
        if self._dead or self._closed:
            return False
        left = self._expires - time.monotonic()
        return left > self._settings.exec_timeout_max + DEADLINE_SAFETY

    async def prepare(self) -> None:
        """Create /mnt/data and make it the Python kernel's working directory."""
        await self._ready_kernel("python")

    async def run(
        self, code: str, language: Language, *, timeout: float, max_output_bytes: int
    ) -> RunOutcome:
        """See executor.backend.Sandbox.run."""
        await self._keep_alive()
        kernel = _KERNEL_LANGUAGES.get(language)
        if kernel is not None:
            return await self._run_code(code, kernel, timeout, max_output_bytes)
        return await self._run_command(code, language, timeout, max_output_bytes)

    async def _run_code(
        self, code: str, kernel: str, seconds: float, max_output_bytes: int
    ) -> RunOutcome:
        state_lost = await self._settled()
        started = time.monotonic()
        stdout, stderr = CappedStream(max_output_bytes), CappedStream(max_output_bytes)
        results = Results(FLOOD_FACTOR * max_output_bytes)
        try:
            await self._ready_kernel(kernel)
            call = self._sbx.run_code(
                code,
                language=kernel,
                on_stdout=self._capture(stdout),
                on_stderr=self._capture(stderr),
                on_result=results.add,
                # A backstop only: ours is the deadline (the SDK's gives up the sandbox).
                timeout=seconds + REQUEST_TIMEOUT,
                request_timeout=REQUEST_TIMEOUT,
            )
            ended = await self._deadline(call, seconds, kernel)
        except SandboxRequestFailed as exc:
            failed = ExecutionError(name="SandboxError", value=exc.message)
            return outcome(stdout, stderr, error=failed, duration_ms=_ms(started))
        error: ExecutionError | None = None
        if ended is _CUT:
            kept = await self._settle(kernel)
            state_lost = state_lost or not kept
            if self._cut_reason == "timeout":
                error = timeout_error(seconds, state_lost=not kept)
            elif self._cut_reason == "flood":
                ending = "was stopped." if kept else "was stopped; the sandbox was restarted."
                error = output_limit_error(FLOOD_FACTOR * max_output_bytes, ending)
            else:
                error = ExecutionError(name="KeyboardInterrupt", value="The run was interrupted.")
        elif ended.error is not None:
            error = execution_error(ended.error)
        if results.dropped:
            stderr.add_text(f"\n[{results.dropped} rich outputs dropped: too large]\n")
        return outcome(
            stdout,
            stderr,
            results=results.items,
            error=error,
            duration_ms=_ms(started),
            timed_out=self._cut_reason == "timeout" and ended is _CUT,
            state_lost=state_lost,
        )

    def _capture(self, stream: CappedStream) -> Callable[[Any], None]:
        """An on_stdout/on_stderr handler that cuts the call once the output is a flood."""

        def add(message: Any) -> None:
            stream.add_text(str(message.line))
            if stream.flooding:
                self._cut("flood")

        return add

    async def _run_command(
        self, code: str, language: Language, seconds: float, max_output_bytes: int
    ) -> RunOutcome:
        stdout, stderr = CappedStream(max_output_bytes), CappedStream(max_output_bytes)
        started = time.monotonic()
        if language is Language.BASH:
            script = code
        else:
            suffix, compile_line = _COMPILERS[language]
            name = f"{SCRATCH}/{uuid.uuid4().hex}"
            src, exe = f"{name}.{suffix}", name
            with self._translated():
                await self._sbx.files.write(
                    src, code, user="root", request_timeout=TRANSFER_TIMEOUT
                )
            compiled = await self._command_outcome(
                compile_line.format(exe=shlex.quote(exe), src=shlex.quote(src)),
                _remaining(seconds, started),
                stdout,
                stderr,
            )
            if compiled != 0:
                return outcome(
                    stdout,
                    stderr,
                    error=_failure(compiled, seconds, "CompileError", stderr.text()),
                    exit_code=compiled,
                    duration_ms=_ms(started),
                    timed_out=compiled in (_TIMEOUT_EXIT, _KILLED_EXIT, None),
                )
            script = shlex.quote(exe)
        exit_code = await self._command_outcome(
            script, _remaining(seconds, started), stdout, stderr
        )
        timed_out = exit_code in (_TIMEOUT_EXIT, _KILLED_EXIT, None)
        return outcome(
            stdout,
            stderr,
            error=timeout_error(seconds, state_lost=False) if timed_out else None,
            exit_code=exit_code,
            duration_ms=_ms(started),
            timed_out=timed_out,
        )

    async def _command_outcome(
        self, script: str, seconds: float, stdout: CappedStream, stderr: CappedStream
    ) -> int | None:
        """Run a shell script under coreutils `timeout`; its exit code, None past our deadline."""
        # SIGTERM at the deadline, SIGKILL after the grace: the process dies inside the VM even
        # if our stream is gone.
        kill_after = max(self._settings.interrupt_grace, MIN_COMMAND_SECONDS)
        wrapped = (
            f"cd {DATA_DIR} && timeout -k {kill_after:.3g} {seconds:.3f} "
            f"bash -c {shlex.quote(script)}"
        )
        deadline = seconds + kill_after + COMMAND_SLACK
        call = self._sbx.commands.run(
            wrapped,
            user="root",
            cwd=DATA_DIR,
            on_stdout=stdout.add_text,
            on_stderr=stderr.add_text,
            timeout=deadline + REQUEST_TIMEOUT,
            request_timeout=REQUEST_TIMEOUT,
        )
        ended = await self._deadline(call, deadline, kernel=None)
        if ended is _CUT:
            return None
        return int(ended.exit_code)

    async def _deadline(self, call: Any, seconds: float, kernel: str | None) -> Any:
        """Await an SDK call under our deadline, `interrupt()` and the flood cap.

        Returns the call's result, or `_CUT` with the reason in `_cut_reason` ("timeout",
        "interrupt", "flood"). A non-zero exit of a command is a result here, not an error.
        If our caller is cancelled, the kernel is checked in the background (`_settling`).
        """
        future = asyncio.ensure_future(call)
        self._call = future
        self._cut_reason = ""
        try:
            with self._translated():
                return await asyncio.wait_for(future, seconds)
        except TimeoutError:
            self._cut_reason = "timeout"
            return _CUT
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                if kernel is not None and not self._closed:
                    self._settling = asyncio.ensure_future(self._settle(kernel))
                raise
            return _CUT
        except CommandExit as exc:
            return exc.result
        finally:
            self._call = None

    def _cut(self, reason: str) -> None:
        if self._call is not None and not self._call.done() and not self._cut_reason:
            self._cut_reason = reason
            self._call.cancel()

    async def _settle(self, kernel: str) -> bool:
        """After a cut call: let E2B's interrupt reach the kernel, then see that it answers,
        restarting its context if it does not. True when the kernel's state was kept."""
        await asyncio.sleep(ABORT_GRACE)
        probe = self._sbx.run_code(
            _PROBE[kernel],
            language=kernel,
            timeout=REQUEST_TIMEOUT,
            request_timeout=REQUEST_TIMEOUT,
        )
        try:
            with self._translated():
                await asyncio.wait_for(
                    probe, max(self._settings.interrupt_grace, MIN_PROBE_SECONDS)
                )
            return True
        except TimeoutError:
            logger.warning("the %s kernel of %s did not stop; restarting it", kernel, self.id)
        except ExecutorError:
            pass
        if not self._dead:
            await self._restart_kernel(kernel)
            # Its queued probe was cut too: the restarted kernel's first cell must not race.
            await asyncio.sleep(ABORT_GRACE)
        return False

    async def _settled(self) -> bool:
        """Wait for the check of a call our caller cut; True if it lost the kernel's state."""
        task, self._settling = self._settling, None
        if task is None:
            return False
        await asyncio.wait({task})
        return task.cancelled() or task.exception() is not None or not task.result()

    async def _ready_kernel(self, kernel: str) -> None:
        if kernel in self._kernels_ready:
            return
        with self._translated():
            await asyncio.wait_for(
                self._sbx.run_code(
                    _PREPARE[kernel],
                    language=kernel,
                    timeout=REQUEST_TIMEOUT,
                    request_timeout=REQUEST_TIMEOUT,
                ),
                REQUEST_TIMEOUT,
            )
        self._kernels_ready.add(kernel)

    async def _restart_kernel(self, kernel: str) -> None:
        """Restart the kernel's context; a sandbox that fails it is dead."""
        self._kernels_ready.discard(kernel)
        try:
            with self._translated():
                contexts = await asyncio.wait_for(self._sbx.list_code_contexts(), REQUEST_TIMEOUT)
                for context in contexts:
                    if context.language == kernel:
                        await asyncio.wait_for(
                            self._sbx.restart_code_context(context), REQUEST_TIMEOUT
                        )
        except (ExecutorError, TimeoutError):
            logger.warning("restarting the %s kernel of %s failed", kernel, self.id)
            self._dead = True

    async def write_file(
        self, path: str, chunks: AsyncIterable[bytes], *, max_bytes: int
    ) -> FileEntry:
        """See executor.backend.Sandbox.write_file."""
        await self._keep_alive()
        target = f"{DATA_DIR}/{path}"
        counter = _Counter(chunks, max_bytes)
        try:
            with self._translated():
                await self._sbx.files.write(
                    target, counter.chunks(), user="root", request_timeout=TRANSFER_TIMEOUT
                )
        except Exception:
            if counter.exceeded:
                await self._remove(target)
                raise FileTooLarge(
                    f"The file exceeds the limit of {max_bytes} bytes.", param="file"
                ) from None
            raise
        return FileEntry(path=target, size=counter.size, modified=time.time())

    async def read_file(self, path: str) -> AsyncIterator[bytes]:
        """See executor.backend.Sandbox.read_file."""
        await self._keep_alive()
        target = f"{DATA_DIR}/{path}"
        with self._translated(file=target):
            info = await self._sbx.files.get_info(
                target, user="root", request_timeout=REQUEST_TIMEOUT
            )
            if _kind(info) != "file" or getattr(info, "symlink_target", None):
                raise SandboxFileNotFound(f"No such file: {target}", param="path")
            stream = await self._sbx.files.read(
                target, format="stream", user="root", request_timeout=TRANSFER_TIMEOUT
            )
        return self._chunks(stream, target)

    async def _chunks(self, stream: Any, target: str) -> AsyncIterator[bytes]:
        try:
            with self._translated(file=target):
                async for chunk in stream:
                    yield bytes(chunk)
        finally:
            close = getattr(stream, "aclose", None)
            if close is not None:
                await close()

    async def list_files(self) -> list[FileEntry]:
        """See executor.backend.Sandbox.list_files."""
        with self._translated():
            entries = await self._sbx.files.list(
                DATA_DIR, depth=LIST_DEPTH, user="root", request_timeout=REQUEST_TIMEOUT
            )
        return sorted(
            (
                FileEntry(
                    path=entry.path, size=entry.size, modified=entry.modified_time.timestamp()
                )
                for entry in entries
                if _kind(entry) == "file"
            ),
            key=lambda f: f.path,
        )

    async def interrupt(self) -> None:
        """Stop the running call: closing its stream makes E2B interrupt the kernel."""
        self._cut("interrupt")

    async def close(self) -> None:
        """Kill the sandbox on E2B (it expires there anyway if that fails)."""
        if self._closed:
            return
        self._closed = True
        if self._settling is not None:
            self._settling.cancel()
            await asyncio.wait({self._settling})
            self._settling = None
        try:
            with self._translated():
                await asyncio.wait_for(
                    self._sbx.kill(request_timeout=REQUEST_TIMEOUT), REQUEST_TIMEOUT
                )
        except (ExecutorError, TimeoutError):
            logger.warning("killing E2B sandbox %s failed", self.id)

    async def _keep_alive(self) -> None:
        """Extend the sandbox's E2B lifetime, at most once per half of the margin.

        After any use the sandbox then outlives an idle session plus its longest run.
        """
        if self._expires - time.monotonic() > self._lifetime - LIFETIME_MARGIN / 2:
            return
        with self._translated():
            await asyncio.wait_for(
                self._sbx.set_timeout(int(self._lifetime), request_timeout=REQUEST_TIMEOUT),
                REQUEST_TIMEOUT,
            )
        self._expires = time.monotonic() + self._lifetime

    async def _remove(self, target: str) -> None:
        with contextlib.suppress(ExecutorError, TimeoutError), self._translated():
            await asyncio.wait_for(
                self._sbx.files.remove(target, user="root", request_timeout=REQUEST_TIMEOUT),
                REQUEST_TIMEOUT,
            )

    @contextlib.contextmanager
    def _translated(self, file: str | None = None) -> Iterator[None]:
        try:
            with translated(self._sdk, file):
                yield
        except SandboxUnavailable:
            self._dead = True
            raise


class _Counter:
    """Counts uploaded bytes and stops the upload past the limit."""

    def __init__(self, source: AsyncIterable[bytes], limit: int) -> None:
        self._source = source
        self._limit = limit
        self.size = 0
        self.exceeded = False

    async def chunks(self) -> AsyncIterator[bytes]:
        async for chunk in self._source:
            self.size += len(chunk)
            if self.size > self._limit:
                self.exceeded = True
                raise FileTooLarge(f"more than {self._limit} bytes", param="file")
            yield chunk


def _kind(entry: Any) -> str:
    kind = getattr(entry, "type", None)
    return str(getattr(kind, "value", kind))


def _failure(code: int | None, seconds: float, name: str, stderr: str) -> ExecutionError:
    if code in (_TIMEOUT_EXIT, _KILLED_EXIT, None):
        return timeout_error(seconds, state_lost=False)
    return ExecutionError(name=name, value=stderr.strip()[-2000:] or f"exit code {code}")


def _remaining(seconds: float, started: float) -> float:
    return max(seconds - (time.monotonic() - started), MIN_COMMAND_SECONDS)


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
