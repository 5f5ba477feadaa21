"""E2BBackend against a fake of exactly the SDK surface it uses (no network), plus one live test."""

import asyncio
import enum
import os
import time
import types
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from executor.e2b import E2BBackend, E2BSandbox
from executor.errors import (
    CapacityExhausted,
    FileTooLarge,
    SandboxFileNotFound,
    SandboxUnavailable,
)
from executor.languages import Language
from executor.service import make_backend
from tests.executor.fakes import make_settings

# The fake SDK: the names E2BBackend reads from `e2b_code_interpreter`.


class SandboxException(Exception):
    pass


class TimeoutException(SandboxException):
    pass


class NotFoundException(SandboxException):
    pass


class FileNotFoundException(NotFoundException):
    pass


class RateLimitException(SandboxException):
    pass


class AuthenticationException(Exception):
    pass


class CommandExitException(SandboxException):
    def __init__(self, stdout: str, stderr: str, exit_code: int) -> None:
        super().__init__(f"exit {exit_code}")
        self.stdout, self.stderr, self.exit_code = stdout, stderr, exit_code


class FileType(enum.Enum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"


@dataclass
class OutputMessage:
    line: str


@dataclass
class Result:
    text: str | None = None
    html: str | None = None
    png: str | None = None
    json: dict[str, Any] | None = None
    extra: dict[str, Any] | None = None
    is_main_result: bool = False


@dataclass
class Error:
    name: str
    value: str
    traceback: str


@dataclass
class Execution:
    error: Error | None = None


@dataclass
class CommandResult:
    stdout: str
    stderr: str
    exit_code: int


@dataclass
class Context:
    id: str
    language: str


@dataclass
class Entry:
    path: str
    type: FileType
    size: int = 0
    symlink_target: str | None = None
    modified_time: datetime = field(default_factory=lambda: datetime.now(UTC))


RunHandler = Callable[..., Awaitable[Execution]]
CommandHandler = Callable[..., Awaitable[CommandResult]]


class FakeFiles:
    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.symlinks: set[str] = set()

    async def write(
        self, path: str, data: Any, user: str | None = None, request_timeout: float | None = None
    ) -> None:
        assert request_timeout is not None
        if isinstance(data, str):
            self.data[path] = data.encode()
            return
        buf = b""
        async for chunk in data:
            buf += chunk
        self.data[path] = buf

    async def get_info(
        self, path: str, user: str | None = None, request_timeout: float | None = None
    ) -> Entry:
        if path in self.symlinks:
            return Entry(path, FileType.SYMLINK, symlink_target="/etc/passwd")
        if path not in self.data:
            raise FileNotFoundException(path)
        return Entry(path, FileType.FILE, len(self.data[path]))

    async def read(
        self,
        path: str,
        format: str = "text",
        user: str | None = None,
        request_timeout: float | None = None,
    ) -> AsyncIterator[bytes]:
        assert format == "stream" and request_timeout is not None
        data = self.data[path]

        async def stream() -> AsyncIterator[bytes]:
            for i in range(0, len(data), 3):
                yield data[i : i + 3]

        return stream()

    async def list(
        self,
        path: str,
        depth: int = 1,
        user: str | None = None,
        request_timeout: float | None = None,
    ) -> list[Entry]:
        assert request_timeout is not None
        entries = [Entry(p, FileType.FILE, len(d)) for p, d in self.data.items()]
        return [*entries, Entry(path + "/subdir", FileType.DIR)]

    async def remove(
        self, path: str, user: str | None = None, request_timeout: float | None = None
    ) -> None:
        self.data.pop(path, None)


class FakeCommands:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.handler: CommandHandler | None = None

    async def run(self, cmd: str, **kw: Any) -> CommandResult:
        assert kw.get("timeout") is not None and kw.get("request_timeout") is not None
        self.calls.append({"cmd": cmd, **kw})
        if self.handler is not None:
            result = await self.handler(cmd, **kw)
        else:
            result = CommandResult("", "", 0)
        if result.exit_code != 0:
            raise CommandExitException(result.stdout, result.stderr, result.exit_code)
        return result


class FakeAsyncSandbox:
    created: list["FakeAsyncSandbox"] = []
    create_error: Exception | None = None

    def __init__(self, **kwargs: Any) -> None:
        self.create_kwargs = kwargs
        self.sandbox_id = f"e2b-{len(self.created)}"
        self.files = FakeFiles()
        self.commands = FakeCommands()
        self.codes: list[tuple[str, str]] = []
        self.run_handler: RunHandler | None = None
        self.cancelled_calls = 0
        self.restarted: list[str] = []
        self.timeouts: list[int] = []
        self.kills = 0

    @classmethod
    async def create(cls, template: str, **kwargs: Any) -> "FakeAsyncSandbox":
        if cls.create_error is not None:
            raise cls.create_error
        sbx = cls(template=template, **kwargs)
        cls.created.append(sbx)
        return sbx

    async def run_code(self, code: str, **kw: Any) -> Execution:
        assert kw.get("timeout") is not None and kw.get("request_timeout") is not None
        self.codes.append((kw["language"], code))
        try:
            if self.run_handler is not None:
                return await self.run_handler(code, **kw)
            return Execution()
        except asyncio.CancelledError:
            self.cancelled_calls += 1
            raise

    async def list_code_contexts(self) -> list[Context]:
        return [Context("ctx-py", "python"), Context("ctx-js", "javascript")]

    async def restart_code_context(self, context: Context) -> None:
        self.restarted.append(context.language)

    async def set_timeout(self, timeout: int, request_timeout: float | None = None) -> None:
        self.timeouts.append(timeout)

    async def kill(self, request_timeout: float | None = None) -> bool:
        self.kills += 1
        return True


def fake_sdk() -> types.SimpleNamespace:
    sandbox_class = type("AsyncSandbox", (FakeAsyncSandbox,), {"created": []})
    return types.SimpleNamespace(
        AsyncSandbox=sandbox_class,
        CommandExitException=CommandExitException,
        FileNotFoundException=FileNotFoundException,
        RateLimitException=RateLimitException,
        AuthenticationException=AuthenticationException,
        NotFoundException=NotFoundException,
        SandboxException=SandboxException,
        TimeoutException=TimeoutException,
    )


@pytest.fixture
def sdk() -> types.SimpleNamespace:
    return fake_sdk()


@pytest.fixture
async def backend(sdk: types.SimpleNamespace) -> E2BBackend:
    settings = make_settings(e2b_api_key=SecretStr("e2b-test-key"), interrupt_grace=0)
    backend = E2BBackend(settings, sdk=sdk)
    await backend.start()
    return backend


async def new_sandbox(backend: E2BBackend, sdk: types.SimpleNamespace) -> tuple[Any, Any]:
    sandbox = await backend.create()
    return sandbox, sdk.AsyncSandbox.created[-1]


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


# Creation


async def test_create_passes_explicit_options(
    backend: E2BBackend, sdk: types.SimpleNamespace
) -> None:
    sandbox, sbx = await new_sandbox(backend, sdk)
    kw = sbx.create_kwargs
    assert kw["template"] == "code-interpreter-v1"
    assert kw["allow_internet_access"] is False
    assert kw["api_key"] == "e2b-test-key"
    assert isinstance(kw["timeout"], int) and kw["timeout"] >= 1200
    assert kw["request_timeout"] > 0
    assert kw["metadata"] == {"app": "codeproxy"}
    # /mnt/data is made and entered by the kernel itself: no command needed.
    assert sbx.commands.calls == []
    [(language, prepare)] = sbx.codes
    assert language == "python"
    assert "makedirs('/mnt/data'" in prepare and "chdir('/mnt/data')" in prepare
    assert sandbox.id == sbx.sandbox_id
    assert sandbox.alive


async def test_start_needs_a_key(sdk: types.SimpleNamespace) -> None:
    backend = E2BBackend(make_settings(e2b_api_key=None), sdk=sdk)
    with pytest.raises(SandboxUnavailable, match="E2B_API_KEY"):
        await backend.start()


async def test_create_errors_are_translated(
    backend: E2BBackend, sdk: types.SimpleNamespace
) -> None:
    sdk.AsyncSandbox.create_error = RateLimitException("429")
    with pytest.raises(CapacityExhausted) as caught:
        await backend.create()
    assert caught.value.retry_after
    sdk.AsyncSandbox.create_error = AuthenticationException("bad key")
    with pytest.raises(SandboxUnavailable, match="API key"):
        await backend.create()


def test_settings_choose_the_e2b_backend() -> None:
    backend = make_backend(make_settings(sandbox_backend="e2b"))
    assert isinstance(backend, E2BBackend)
    assert backend.name == "e2b"


# Python and JavaScript


async def test_python_results_are_mapped(backend: E2BBackend, sdk: types.SimpleNamespace) -> None:
    sandbox, sbx = await new_sandbox(backend, sdk)

    async def handler(code: str, **kw: Any) -> Execution:
        kw["on_stdout"](OutputMessage("hello\n"))
        kw["on_stderr"](OutputMessage("warn\n"))
        kw["on_result"](Result(text="<Figure>", png="iVBORw0KGgo=", is_main_result=False))
        kw["on_result"](Result(text="42", json={"a": 1}, extra={"x/y": "z"}, is_main_result=True))
        return Execution(error=Error("ValueError", "bad", "Traceback...\nValueError: bad"))

    sbx.run_handler = handler
    out = await sandbox.run("print('hello')", Language.PYTHON, timeout=5, max_output_bytes=1024)
    assert (out.stdout, out.stderr) == ("hello\n", "warn\n")
    assert [r.kind for r in out.results] == ["display_data", "execute_result"]
    assert out.results[0].data == {"text/plain": "<Figure>", "image/png": "iVBORw0KGgo="}
    assert out.results[1].data == {
        "text/plain": "42",
        "application/json": '{"a": 1}',
        "x/y": "z",
    }
    assert out.error is not None
    assert (out.error.name, out.error.value) == ("ValueError", "bad")
    # E2B joins Jupyter's traceback entries into one string: it comes back as lines.
    assert out.error.traceback == ["Traceback...", "ValueError: bad"]
    assert not out.timed_out and not out.state_lost


async def test_output_is_capped(backend: E2BBackend, sdk: types.SimpleNamespace) -> None:
    sandbox, sbx = await new_sandbox(backend, sdk)

    async def handler(code: str, **kw: Any) -> Execution:
        for _ in range(10):
            kw["on_stdout"](OutputMessage("x" * 300))
        return Execution()

    sbx.run_handler = handler
    out = await sandbox.run("flood", Language.PYTHON, timeout=5, max_output_bytes=1000)
    assert len(out.stdout) == 1000
    assert out.stdout_truncated and not out.stderr_truncated


async def test_our_deadline_interrupts_and_keeps_the_state(
    backend: E2BBackend, sdk: types.SimpleNamespace
) -> None:
    sandbox, sbx = await new_sandbox(backend, sdk)

    async def hang(code: str, **kw: Any) -> Execution:
        if code == "while True: pass":
            kw["on_stdout"](OutputMessage("started\n"))
            await asyncio.sleep(3600)
        return Execution()

    sbx.run_handler = hang
    out = await sandbox.run("while True: pass", Language.PYTHON, timeout=0.2, max_output_bytes=99)
    assert out.timed_out and not out.state_lost
    assert out.stdout == "started\n"
    assert out.error is not None and out.error.name == "TimeoutError"
    assert "interrupted" in out.error.value
    assert sbx.cancelled_calls == 1
    # The kernel answered after the interrupt: nothing was restarted.
    assert sbx.restarted == []
    assert [code for _, code in sbx.codes][-1] == "pass"
    assert sandbox.alive


async def test_a_kernel_that_stays_busy_after_the_deadline_is_restarted(
    backend: E2BBackend, sdk: types.SimpleNamespace
) -> None:
    sandbox, sbx = await new_sandbox(backend, sdk)
    busy = True

    async def stubborn(code: str, **kw: Any) -> Execution:
        if busy and code in ("sum(range(10**12))", "pass"):
            await asyncio.sleep(3600)
        return Execution()

    sbx.run_handler = stubborn
    out = await sandbox.run("sum(range(10**12))", Language.PYTHON, timeout=0.2, max_output_bytes=9)
    assert out.timed_out and out.state_lost
    assert out.error is not None and "restarted" in out.error.value
    assert sbx.restarted == ["python"]
    busy = False
    # The restarted kernel gets its working directory back before the next cell.
    await sandbox.run("1", Language.PYTHON, timeout=5, max_output_bytes=99)
    assert [code for _, code in sbx.codes].count(sbx.codes[0][1]) == 2
    assert sandbox.alive


async def test_cancelling_run_cancels_the_sdk_call(
    backend: E2BBackend, sdk: types.SimpleNamespace
) -> None:
    sandbox, sbx = await new_sandbox(backend, sdk)
    started = asyncio.Event()

    async def hang(code: str, **kw: Any) -> Execution:
        started.set()
        await asyncio.sleep(3600)
        return Execution()

    sbx.run_handler = hang
    task = asyncio.create_task(sandbox.run("x", Language.PYTHON, timeout=60, max_output_bytes=9))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sbx.cancelled_calls == 1


async def test_interrupt_stops_the_running_call(
    backend: E2BBackend, sdk: types.SimpleNamespace
) -> None:
    sandbox, sbx = await new_sandbox(backend, sdk)
    started = asyncio.Event()

    async def hang(code: str, **kw: Any) -> Execution:
        started.set()
        await asyncio.sleep(3600)
        return Execution()

    sbx.run_handler = hang
    task = asyncio.create_task(sandbox.run("x", Language.PYTHON, timeout=60, max_output_bytes=9))
    await started.wait()
    await sandbox.interrupt()
    out = await task
    assert out.error is not None and out.error.name == "KeyboardInterrupt"


async def test_javascript_runs_in_its_kernel(
    backend: E2BBackend, sdk: types.SimpleNamespace
) -> None:
    sandbox, sbx = await new_sandbox(backend, sdk)
    await sandbox.run("console.log(1)", Language.JAVASCRIPT, timeout=5, max_output_bytes=99)
    await sandbox.run("console.log(2)", Language.JAVASCRIPT, timeout=5, max_output_bytes=99)
    js = [code for lang, code in sbx.codes if lang == "javascript"]
    assert js == ['process.chdir("/mnt/data")', "console.log(1)", "console.log(2)"]


async def test_dead_sandbox_during_run(backend: E2BBackend, sdk: types.SimpleNamespace) -> None:
    sandbox, sbx = await new_sandbox(backend, sdk)

    async def gone(code: str, **kw: Any) -> Execution:
        raise TimeoutException("sandbox was killed")

    sbx.run_handler = gone
    with pytest.raises(SandboxUnavailable):
        await sandbox.run("x", Language.PYTHON, timeout=5, max_output_bytes=9)
    assert not sandbox.alive


@pytest.mark.parametrize(
    "error",
    [
        httpx.RemoteProtocolError("peer closed"),
        httpx.ConnectError("refused"),
        httpx.ReadTimeout(""),
    ],
    ids=["died-mid-stream", "gone", "stalled"],
)
async def test_raw_transport_errors_make_the_sandbox_unavailable(
    backend: E2BBackend, sdk: types.SimpleNamespace, error: Exception
) -> None:
    # The SDK lets httpx's errors through as they are; they mean the sandbox is unusable.
    sandbox, sbx = await new_sandbox(backend, sdk)

    async def broken(code: str, **kw: Any) -> Execution:
        raise error

    sbx.run_handler = broken
    with pytest.raises(SandboxUnavailable):
        await sandbox.run("x", Language.PYTHON, timeout=5, max_output_bytes=9)
    assert not sandbox.alive


async def test_a_server_error_for_one_request_is_not_a_dead_sandbox(
    backend: E2BBackend, sdk: types.SimpleNamespace
) -> None:
    sandbox, sbx = await new_sandbox(backend, sdk)

    async def refused(code: str, **kw: Any) -> Execution:
        raise SandboxException("500 Internal Server Error: No such kernel")

    sbx.run_handler = refused
    out = await sandbox.run("x", Language.JAVASCRIPT, timeout=5, max_output_bytes=9)
    assert out.error is not None and out.error.name == "SandboxError"
    assert "No such kernel" in out.error.value
    assert sandbox.alive


# One-shot commands


async def test_bash_runs_as_a_bounded_command(
    backend: E2BBackend, sdk: types.SimpleNamespace
) -> None:
    sandbox, sbx = await new_sandbox(backend, sdk)

    async def handler(cmd: str, **kw: Any) -> CommandResult:
        kw["on_stdout"]("hi\n")
        kw["on_stderr"]("oops\n")
        return CommandResult("hi\n", "oops\n", 3)

    sbx.commands.handler = handler
    out = await sandbox.run("echo hi; exit 3", Language.BASH, timeout=7, max_output_bytes=99)
    call = sbx.commands.calls[-1]
    assert call["cmd"] == "cd /mnt/data && timeout -k 0.1 7.000 bash -c 'echo hi; exit 3'"
    assert call["cwd"] == "/mnt/data" and call["user"] == "root"
    assert (out.stdout, out.stderr, out.exit_code) == ("hi\n", "oops\n", 3)
    assert out.error is None and not out.timed_out


async def test_bash_past_its_deadline(backend: E2BBackend, sdk: types.SimpleNamespace) -> None:
    sandbox, sbx = await new_sandbox(backend, sdk)

    async def killed(cmd: str, **kw: Any) -> CommandResult:
        return CommandResult("", "", 124)

    sbx.commands.handler = killed
    out = await sandbox.run("sleep 100", Language.BASH, timeout=1, max_output_bytes=99)
    assert out.timed_out and out.exit_code == 124
    assert out.error is not None and out.error.name == "TimeoutError"


async def test_hung_command_is_cut_by_our_deadline(
    backend: E2BBackend, sdk: types.SimpleNamespace
) -> None:
    sandbox, sbx = await new_sandbox(backend, sdk)

    async def hang(cmd: str, **kw: Any) -> CommandResult:
        await asyncio.sleep(3600)
        return CommandResult("", "", 0)

    sbx.commands.handler = hang
    start = time.monotonic()
    out = await sandbox.run("sleep 100", Language.BASH, timeout=0.1, max_output_bytes=9)
    # Deadline + kill grace (0.1 s here) + slack for the stream (1 s).
    assert time.monotonic() - start < 2.0
    assert out.timed_out and out.exit_code is None


async def test_c_is_compiled_then_run(backend: E2BBackend, sdk: types.SimpleNamespace) -> None:
    sandbox, sbx = await new_sandbox(backend, sdk)
    source = '#include <stdio.h>\nint main(void){puts("hi");}'
    await sandbox.run(source, Language.C, timeout=5, max_output_bytes=99)
    [(path, data)] = [(p, d) for p, d in sbx.files.data.items() if p.endswith(".c")]
    assert path.startswith("/tmp/codeproxy/") and data == source.encode()
    compile_cmd, run_cmd = (c["cmd"] for c in sbx.commands.calls[-2:])
    assert "gcc -O2" in compile_cmd and path in compile_cmd and "timeout -k 0.1 " in compile_cmd
    assert path[:-2] in run_cmd


async def test_cpp_compile_error(backend: E2BBackend, sdk: types.SimpleNamespace) -> None:
    sandbox, sbx = await new_sandbox(backend, sdk)

    async def fail(cmd: str, **kw: Any) -> CommandResult:
        kw["on_stderr"]("main.cpp:1: error: expected ';'\n")
        return CommandResult("", "main.cpp:1: error: expected ';'\n", 1)

    sbx.commands.handler = fail
    out = await sandbox.run(
        "int main() { return 0 }", Language.CPP, timeout=5, max_output_bytes=999
    )
    assert "g++" in sbx.commands.calls[-1]["cmd"]
    assert out.error is not None and out.error.name == "CompileError"
    assert "expected ';'" in out.error.value
    assert out.exit_code == 1 and not out.timed_out


# Files


async def test_files(backend: E2BBackend, sdk: types.SimpleNamespace) -> None:
    sandbox, sbx = await new_sandbox(backend, sdk)
    entry = await sandbox.write_file("d/a.txt", chunks(b"hello ", b"world"), max_bytes=100)
    assert (entry.path, entry.size) == ("/mnt/data/d/a.txt", 11)
    assert sbx.files.data["/mnt/data/d/a.txt"] == b"hello world"
    stream = await sandbox.read_file("d/a.txt")
    assert b"".join([c async for c in stream]) == b"hello world"
    listed = await sandbox.list_files()
    assert [(f.path, f.size) for f in listed] == [("/mnt/data/d/a.txt", 11)]
    with pytest.raises(SandboxFileNotFound):
        await sandbox.read_file("missing.txt")
    sbx.files.symlinks.add("/mnt/data/link")
    with pytest.raises(SandboxFileNotFound):
        await sandbox.read_file("link")


async def test_upload_limit(backend: E2BBackend, sdk: types.SimpleNamespace) -> None:
    sandbox, sbx = await new_sandbox(backend, sdk)
    with pytest.raises(FileTooLarge):
        await sandbox.write_file("big", chunks(b"12345", b"67890"), max_bytes=8)
    assert "/mnt/data/big" not in sbx.files.data


# Lifetime


async def test_lifetime_is_extended_on_use(backend: E2BBackend, sdk: types.SimpleNamespace) -> None:
    sandbox, sbx = await new_sandbox(backend, sdk)
    assert isinstance(sandbox, E2BSandbox)
    await sandbox.run("1", Language.PYTHON, timeout=5, max_output_bytes=9)
    assert sbx.timeouts == []
    sandbox._expires -= 200
    await sandbox.run("1", Language.PYTHON, timeout=5, max_output_bytes=9)
    assert sbx.timeouts == [int(backend.lifetime)]
    sandbox._expires = time.monotonic() + 10
    assert not sandbox.alive


async def test_close_kills_once(backend: E2BBackend, sdk: types.SimpleNamespace) -> None:
    sandbox, sbx = await new_sandbox(backend, sdk)
    await sandbox.close()
    await sandbox.close()
    assert sbx.kills == 1
    assert not sandbox.alive


# Live


@pytest.mark.live
@pytest.mark.skipif(not os.environ.get("E2B_API_KEY"), reason="needs E2B_API_KEY")
async def test_live_e2b_round_trip() -> None:
    settings = make_settings(
        sandbox_backend="e2b", e2b_api_key=SecretStr(os.environ["E2B_API_KEY"])
    )
    backend = E2BBackend(settings)
    await backend.start()
    sandbox = await backend.create()
    try:
        first = await sandbox.run("x = 41", Language.PYTHON, timeout=30, max_output_bytes=9999)
        assert first.error is None
        out = await sandbox.run("print(x + 1)", Language.PYTHON, timeout=30, max_output_bytes=99)
        assert out.stdout == "42\n"
        await sandbox.write_file("in.txt", chunks(b"data"), max_bytes=100)
        assert "/mnt/data/in.txt" in [f.path for f in await sandbox.list_files()]
        sh = await sandbox.run("cat in.txt", Language.BASH, timeout=30, max_output_bytes=99)
        assert sh.stdout == "data"
        slow = await sandbox.run(
            "import time; time.sleep(30)", Language.PYTHON, timeout=2, max_output_bytes=9
        )
        assert slow.timed_out and slow.duration_ms < 10_000
    finally:
        await sandbox.close()
        await backend.aclose()
