"""The E2B backend: sandboxes are E2B cloud microVMs driven by `e2b_code_interpreter` (SDK v2).

Python and JavaScript run in the sandbox's stateful Jupyter kernels (`run_code`); bash, C and
C++ run as one-shot commands (`commands.run`), wrapped in coreutils `timeout` so a runaway
process dies inside the VM too. Everything runs as root, like E2B's kernels, so files the
kernel writes under /mnt/data stay writable by commands and uploads.

Our deadline is enforced with `asyncio.wait_for`: the SDK's own `run_code` timeout fires at
about twice the value (E2B issue #1881). A deadline reached restarts the kernel's context, so
the result says `state_lost`. Cancelling a run closes its HTTP stream, which makes E2B's server
interrupt the kernel.

The SDK is imported when the backend starts (it is the optional `e2b` extra); tests inject a
fake module with the same surface through `sdk`. SDK exceptions become `ExecutorError`s in
`_translated`, and nowhere else.
"""

import asyncio
import contextlib
import importlib
import json
import logging
import shlex
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from typing import Any

from executor.api import DATA_DIR
from executor.errors import (
    CapacityExhausted,
    ExecutorError,
    FileTooLarge,
    SandboxFileNotFound,
    SandboxUnavailable,
)
from executor.languages import Language
from executor.models import ExecutionError, FileEntry, RichOutput, RunOutcome
from executor.settings import ExecutorSettings

logger = logging.getLogger(__name__)

# Explicit bounds for every SDK call (the SDK's defaults are not ours to rely on).
CREATE_TIMEOUT = 60.0
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
# Rich results (images) may be larger than text output; past this many times the output cap
# further results are dropped.
RESULTS_FACTOR = 8
LIST_DEPTH = 32
SCRATCH = "/tmp/codeproxy"

_KERNEL_LANGUAGES = {Language.PYTHON: "python", Language.JAVASCRIPT: "javascript"}
_CHDIR = {
    "python": f"import os as _os; _os.chdir({DATA_DIR!r}); del _os",
    "javascript": f"process.chdir({json.dumps(DATA_DIR)})",
}
_MIME = {
    "text": "text/plain",
    "html": "text/html",
    "markdown": "text/markdown",
    "latex": "text/latex",
    "svg": "image/svg+xml",
    "png": "image/png",
    "jpeg": "image/jpeg",
    "pdf": "application/pdf",
    "javascript": "application/javascript",
}
_COMPILERS = {
    Language.C: ("c", "gcc -O2 -std=gnu17 -o {exe} {src} -lm"),
    Language.CPP: ("cpp", "g++ -O2 -std=gnu++17 -o {exe} {src} -lm"),
}


class E2BBackend:
    """Creates E2B sandboxes from `settings.e2b_template`, with no internet access."""

    name = "e2b"

    def __init__(self, settings: ExecutorSettings, sdk: Any = None) -> None:
        self._settings = settings
        self._sdk = sdk
        # Sandbox lifetime on E2B's side, refreshed on use (see E2BSandbox._keep_alive).
        self.lifetime = settings.session_idle_timeout + settings.exec_timeout_max + LIFETIME_MARGIN

    async def start(self) -> None:
        if self._settings.e2b_api_key is None:
            raise SandboxUnavailable(
                "The e2b sandbox backend needs an API key: set E2B_API_KEY or "
                "CODEPROXY_E2B_API_KEY."
            )
        if self._sdk is None:
            try:
                self._sdk = importlib.import_module("e2b_code_interpreter")
            except ImportError as exc:
                raise SandboxUnavailable(
                    "The e2b sandbox backend needs the SDK: pip install 'codeproxy[e2b]'."
                ) from exc

    async def create(self) -> "E2BSandbox":
        if self._sdk is None:
            raise SandboxUnavailable("The e2b backend has not been started.")
        assert self._settings.e2b_api_key is not None
        options: dict[str, Any] = {
            "api_key": self._settings.e2b_api_key.get_secret_value(),
            "request_timeout": REQUEST_TIMEOUT,
        }
        if self._settings.e2b_domain:
            options["domain"] = self._settings.e2b_domain
        with _translated(self._sdk, None):
            sbx = await asyncio.wait_for(
                self._sdk.AsyncSandbox.create(
                    self._settings.e2b_template,
                    timeout=int(self.lifetime),
                    allow_internet_access=False,
                    metadata={"app": "codeproxy"},
                    **options,
                ),
                CREATE_TIMEOUT,
            )
        sandbox = E2BSandbox(sbx, self._sdk, self._settings, self.lifetime)
        try:
            await sandbox.prepare()
        except BaseException:
            await sandbox.close()
            raise
        return sandbox

    async def aclose(self) -> None:
        """Nothing to do: the pool closes every sandbox, and E2B expires any we lost."""


class E2BSandbox:
    """One E2B sandbox (see the module docstring)."""

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

    @property
    def id(self) -> str:
        return str(self._sbx.sandbox_id)

    @property
    def alive(self) -> bool:
        if self._dead or self._closed:
            return False
        # A run must be able to finish before E2B's deadline.
        left = self._expires - time.monotonic()
        return left > self._settings.exec_timeout_max + DEADLINE_SAFETY

    async def prepare(self) -> None:
        """Create /mnt/data and make it the Python kernel's working directory."""
        await self._command(
            f"mkdir -p {DATA_DIR} {SCRATCH} && chmod 777 {DATA_DIR}", seconds=REQUEST_TIMEOUT
        )
        await self._ready_kernel("python")

    async def run(
        self,
        code: str,
        language: Language,
        *,
        timeout: float,
        max_output_bytes: int,
    ) -> RunOutcome:
        await self._keep_alive()
        kernel = _KERNEL_LANGUAGES.get(language)
        if kernel is not None:
            return await self._run_code(code, kernel, timeout, max_output_bytes)
        return await self._run_command(code, language, timeout, max_output_bytes)

    async def _run_code(
        self, code: str, kernel: str, seconds: float, max_output_bytes: int
    ) -> RunOutcome:
        await self._ready_kernel(kernel)
        stdout, stderr = _CappedText(max_output_bytes), _CappedText(max_output_bytes)
        results = _Results(max_output_bytes * RESULTS_FACTOR)
        started = time.monotonic()
        call = self._sbx.run_code(
            code,
            language=kernel,
            on_stdout=lambda message: stdout.add(message.line),
            on_stderr=lambda message: stderr.add(message.line),
            on_result=results.add,
            # A backstop only: our wait_for below fires first (the SDK's fires at about 2x).
            timeout=seconds,
            request_timeout=REQUEST_TIMEOUT,
        )
        outcome = await self._deadline(call, seconds)
        if outcome is _TIMED_OUT:
            await self._restart_kernel(kernel)
            return _outcome(
                stdout,
                stderr,
                results=results.items,
                error=_deadline_error(seconds),
                duration_ms=_ms(started),
                timed_out=True,
                state_lost=True,
            )
        error = None
        if outcome is _INTERRUPTED:
            error = ExecutionError(name="KeyboardInterrupt", value="The run was interrupted.")
        elif outcome.error is not None:
            tb = outcome.error.traceback
            error = ExecutionError(
                name=outcome.error.name, value=outcome.error.value, traceback=[tb] if tb else []
            )
        return _outcome(
            stdout,
            stderr,
            results=results.items,
            error=error,
            duration_ms=_ms(started),
        )

    async def _run_command(
        self, code: str, language: Language, seconds: float, max_output_bytes: int
    ) -> RunOutcome:
        stdout, stderr = _CappedText(max_output_bytes), _CappedText(max_output_bytes)
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
                return _outcome(
                    stdout,
                    stderr,
                    error=_failure(compiled, seconds, "CompileError", stderr.text),
                    exit_code=compiled,
                    duration_ms=_ms(started),
                    timed_out=compiled in (_TIMEOUT_EXIT, _KILLED_EXIT, None),
                )
            script = shlex.quote(exe)
        exit_code = await self._command_outcome(
            script, _remaining(seconds, started), stdout, stderr
        )
        timed_out = exit_code in (_TIMEOUT_EXIT, _KILLED_EXIT, None)
        return _outcome(
            stdout,
            stderr,
            error=_deadline_error(seconds) if timed_out else None,
            exit_code=exit_code,
            duration_ms=_ms(started),
            timed_out=timed_out,
        )

    async def _command_outcome(
        self, script: str, seconds: float, stdout: "_CappedText", stderr: "_CappedText"
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
            on_stdout=stdout.add,
            on_stderr=stderr.add,
            timeout=deadline + REQUEST_TIMEOUT,
            request_timeout=REQUEST_TIMEOUT,
        )
        outcome = await self._deadline(call, deadline)
        if outcome is _TIMED_OUT or outcome is _INTERRUPTED:
            return None
        return int(outcome.exit_code)

    async def _deadline(self, call: Any, seconds: float) -> Any:
        """Await an SDK call under our deadline and `interrupt()`; SDK errors translated.

        Returns the call's result, `_TIMED_OUT`, or `_INTERRUPTED`. A non-zero exit of a
        command is a result here, not an error.
        """
        future = asyncio.ensure_future(call)
        self._call = future
        try:
            with self._translated():
                return await asyncio.wait_for(future, seconds)
        except TimeoutError:
            return _TIMED_OUT
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
            return _INTERRUPTED
        except _CommandExit as exc:
            return exc.result
        finally:
            self._call = None

    async def _ready_kernel(self, kernel: str) -> None:
        if kernel in self._kernels_ready:
            return
        with self._translated():
            await asyncio.wait_for(
                self._sbx.run_code(
                    _CHDIR[kernel],
                    language=kernel,
                    timeout=REQUEST_TIMEOUT,
                    request_timeout=REQUEST_TIMEOUT,
                ),
                REQUEST_TIMEOUT,
            )
        self._kernels_ready.add(kernel)

    async def _restart_kernel(self, kernel: str) -> None:
        """Restart the kernel's context after a deadline; a sandbox that fails it is dead."""
        self._kernels_ready.discard(kernel)
        try:
            with self._translated():
                contexts = await asyncio.wait_for(self._sbx.list_code_contexts(), REQUEST_TIMEOUT)
                for context in contexts:
                    if context.language == kernel:
                        await asyncio.wait_for(
                            self._sbx.restart_code_context(context), REQUEST_TIMEOUT
                        )
            await self._ready_kernel(kernel)
        except (ExecutorError, TimeoutError):
            logger.warning("restarting the %s kernel of %s failed", kernel, self.id)
            self._dead = True

    async def write_file(
        self, path: str, chunks: AsyncIterable[bytes], *, max_bytes: int
    ) -> FileEntry:
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
        if self._call is not None:
            self._call.cancel()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            with self._translated():
                await asyncio.wait_for(
                    self._sbx.kill(request_timeout=REQUEST_TIMEOUT), REQUEST_TIMEOUT
                )
        except (ExecutorError, TimeoutError):
            # E2B kills it at the end of its lifetime anyway.
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

    async def _command(self, script: str, *, seconds: float) -> None:
        try:
            with self._translated():
                await asyncio.wait_for(
                    self._sbx.commands.run(
                        script, user="root", timeout=seconds, request_timeout=REQUEST_TIMEOUT
                    ),
                    seconds,
                )
        except _CommandExit as exc:
            raise SandboxUnavailable(f"Preparing the E2B sandbox failed: {exc}.") from None

    async def _remove(self, target: str) -> None:
        with contextlib.suppress(ExecutorError, TimeoutError), self._translated():
            await asyncio.wait_for(
                self._sbx.files.remove(target, user="root", request_timeout=REQUEST_TIMEOUT),
                REQUEST_TIMEOUT,
            )

    @contextlib.contextmanager
    def _translated(self, file: str | None = None) -> Iterator[None]:
        try:
            with _translated(self._sdk, file):
                yield
        except SandboxUnavailable:
            self._dead = True
            raise


class _CommandExit(Exception):
    """Carries the result of a command that exited non-zero (the SDK raises for those)."""

    def __init__(self, result: Any) -> None:
        super().__init__(f"exit code {result.exit_code}")
        self.result = result


@contextlib.contextmanager
def _translated(sdk: Any, file: str | None) -> Iterator[None]:
    """Turn the SDK's exceptions into ExecutorErrors (the one place that knows them)."""
    try:
        yield
    except ExecutorError:
        raise
    except sdk.CommandExitException as exc:
        raise _CommandExit(exc) from None
    except sdk.FileNotFoundException as exc:
        raise SandboxFileNotFound(f"No such file: {file}", param="path") from exc
    except sdk.RateLimitException as exc:
        raise CapacityExhausted("E2B's rate limit was reached.", retry_after=5.0) from exc
    except sdk.AuthenticationException as exc:
        raise SandboxUnavailable("E2B rejected the API key.") from exc
    except sdk.NotFoundException as exc:
        if file is not None:
            raise SandboxFileNotFound(f"No such file: {file}", param="path") from exc
        raise SandboxUnavailable("The E2B sandbox is gone.") from exc
    except (sdk.SandboxException, sdk.TimeoutException) as exc:
        logger.warning("E2B call failed: %s", exc)
        raise SandboxUnavailable(f"The E2B sandbox failed: {type(exc).__name__}.") from exc


_TIMED_OUT: Any = object()
_INTERRUPTED: Any = object()
_TIMEOUT_EXIT = 124
_KILLED_EXIT = 137


class _CappedText:
    """Output kept up to a byte limit, cut inside a chunk if need be (chunks can be huge)."""

    def __init__(self, limit: int) -> None:
        self._parts: list[str] = []
        self._room = limit
        self.truncated = False

    def add(self, text: str) -> None:
        if self.truncated:
            return
        data = text.encode()
        if len(data) <= self._room:
            self._parts.append(text)
            self._room -= len(data)
            return
        self._parts.append(data[: self._room].decode(errors="ignore"))
        self._room = 0
        self.truncated = True

    @property
    def text(self) -> str:
        return "".join(self._parts)


class _Results:
    """Rich results as mime bundles, dropped once their total size passes a limit."""

    def __init__(self, limit: int) -> None:
        self.items: list[RichOutput] = []
        self._room = limit

    def add(self, result: Any) -> None:
        data: dict[str, str] = {}
        for attr, mime in _MIME.items():
            value = getattr(result, attr, None)
            if isinstance(value, str) and value:
                data[mime] = value
        if getattr(result, "json", None) is not None:
            data["application/json"] = json.dumps(result.json)
        for mime, value in (getattr(result, "extra", None) or {}).items():
            data[str(mime)] = value if isinstance(value, str) else json.dumps(value)
        size = sum(len(v) for v in data.values())
        if not data or size > self._room:
            return
        self._room -= size
        kind = "execute_result" if getattr(result, "is_main_result", False) else "display_data"
        self.items.append(RichOutput(kind=kind, data=data))


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


def _outcome(stdout: _CappedText, stderr: _CappedText, **fields: Any) -> RunOutcome:
    return RunOutcome(
        stdout=stdout.text,
        stderr=stderr.text,
        stdout_truncated=stdout.truncated,
        stderr_truncated=stderr.truncated,
        **fields,
    )


def _kind(entry: Any) -> str:
    kind = getattr(entry, "type", None)
    return str(getattr(kind, "value", kind))


def _deadline_error(seconds: float) -> ExecutionError:
    return ExecutionError(name="TimeoutError", value=f"Execution exceeded {seconds:g} seconds.")


def _failure(code: int | None, seconds: float, name: str, stderr: str) -> ExecutionError:
    if code in (_TIMEOUT_EXIT, _KILLED_EXIT, None):
        return _deadline_error(seconds)
    return ExecutionError(name=name, value=stderr.strip()[-2000:] or f"exit code {code}")


def _remaining(seconds: float, started: float) -> float:
    return max(seconds - (time.monotonic() - started), MIN_COMMAND_SECONDS)


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
