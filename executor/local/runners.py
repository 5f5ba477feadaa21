"""One-shot runs (javascript, bash, C, C++): a fresh bwrap per run, same limits as the kernel.

The source is copied into the run's own /tmp (a tmpfs, exec allowed); C and C++ are compiled
there and run. /mnt/data is the sandbox's shared directory, so files pass between runs and
the Python kernel. A compile step reports success on a status pipe, which tells a compile
error from a program that fails.
"""

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from executor.languages import Language
from executor.local.bwrap import BWRAP_ENV, Launch
from executor.output import CappedStream

READ_CHUNK = 64 * 1024
# After killing a sandbox's pid 1, how long its bwrap may take to notice and exit.
OUTER_KILL_DELAY = 1.0


@dataclass(frozen=True)
class Program:
    """How to run one language: where its source goes and the command line."""

    source: str
    command: tuple[str, ...]
    compiler: tuple[str, ...] = ()

    def argv(self, status_fd: int | None) -> list[str]:
        """The command line; compiled languages compile, report on `status_fd`, then run."""
        if not self.compiler or status_fd is None:
            return list(self.command)
        compile_cmd = " ".join(self.compiler)
        # The compiler's exit status decides; the status fd is closed before user code runs.
        script = (
            f"{compile_cmd} || exit $?; echo ok >&{status_fd}; exec {status_fd}>&-; "
            f"exec {' '.join(self.command)}"
        )
        return ["bash", "-c", script]


PROGRAMS: dict[Language, Program] = {
    Language.JAVASCRIPT: Program("/tmp/main.js", ("node", "/tmp/main.js")),
    Language.BASH: Program("/tmp/main.sh", ("bash", "/tmp/main.sh")),
    Language.C: Program(
        "/tmp/main.c",
        ("/tmp/main",),
        ("gcc", "-O2", "-std=gnu17", "-o", "/tmp/main", "/tmp/main.c", "-lm"),
    ),
    Language.CPP: Program(
        "/tmp/main.cpp",
        ("/tmp/main",),
        ("g++", "-O2", "-std=gnu++17", "-o", "/tmp/main", "/tmp/main.cpp"),
    ),
}


class SandboxPid:
    """A sandbox's pid 1 (bwrap's reaper, reported on --info-fd), held as a pidfd.

    Killing it takes the whole pid namespace down, after which the outer bwrap exits by
    itself; killing only the outer one would rely on --die-with-parent. The pidfd makes the
    kill safe against pid reuse.
    """

    def __init__(self, pid: int | None = None) -> None:
        self.pid: int | None = None
        self._fd: int | None = None
        if pid is not None:
            self.set(pid)

    def set(self, pid: int | None) -> None:
        """Record the pid reported by bwrap and open a pidfd for it."""
        self.pid = pid
        if pid is not None and self._fd is None:
            with contextlib.suppress(OSError):
                self._fd = os.pidfd_open(pid)

    def kill(self) -> bool:
        """SIGKILL the sandbox; False when its pid is unknown (kill the outer bwrap then)."""
        if self._fd is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(self._fd, signal.SIGKILL)
        return True

    def close(self) -> None:
        """Close the pidfd."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@dataclass
class ProcessResult:
    """What a one-shot process did."""

    returncode: int | None
    stdout: CappedStream
    stderr: CappedStream
    timed_out: bool = False
    flooded: bool = False


async def _drain(
    stream: asyncio.StreamReader, capped: CappedStream, on_flood: Callable[[], None]
) -> None:
    while chunk := await stream.read(READ_CHUNK):
        capped.add(chunk)
        if capped.flooding:
            on_flood()
            # Keep reading (and counting) so the killed process's pipe never blocks.


async def run_process(
    launch: Launch,
    *,
    extra_fds: Sequence[int] = (),
    preexec: Callable[[], None],
    timeout: float,
    max_output_bytes: int,
) -> ProcessResult:
    """Run a prepared bwrap command (`info=True`) with a wall-clock deadline.

    Output is drained continuously and capped. On timeout, flood or cancellation the sandbox
    is SIGKILLed. Either way the call returns (or raises) only once the sandbox's pid 1 is
    gone, so nothing of the run outlives it. `extra_fds` are inherited by the child and
    closed here after the spawn; `launch` is closed at the end.
    """
    result = ProcessResult(None, CappedStream(max_output_bytes), CappedStream(max_output_bytes))
    sandbox = SandboxPid()
    try:
        try:
            proc = await asyncio.create_subprocess_exec(
                *launch.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=[*launch.pass_fds, *extra_fds],
                preexec_fn=preexec,
                start_new_session=True,
                env=BWRAP_ENV,
            )
        finally:
            launch.close_child_fds()
            for fd in extra_fds:
                os.close(fd)
        learn = asyncio.ensure_future(_learn_pid(launch, sandbox))
        await _supervise(proc, result, sandbox, timeout)
        await learn
        await wait_gone(sandbox.pid)
    finally:
        launch.close()
        sandbox.close()
    return result


async def _learn_pid(launch: Launch, sandbox: SandboxPid) -> None:
    sandbox.set(await asyncio.to_thread(launch.read_info))


async def _supervise(
    proc: asyncio.subprocess.Process, result: ProcessResult, sandbox: SandboxPid, timeout: float
) -> None:
    assert proc.stdout is not None and proc.stderr is not None

    def kill_bwrap() -> None:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)

    def kill() -> None:
        if proc.returncode is None:
            if sandbox.kill():
                asyncio.get_running_loop().call_later(OUTER_KILL_DELAY, kill_bwrap)
            else:
                kill_bwrap()

    def flood() -> None:
        result.flooded = True
        kill()

    drains = asyncio.gather(
        _drain(proc.stdout, result.stdout, flood), _drain(proc.stderr, result.stderr, flood)
    )
    try:
        try:
            await asyncio.wait_for(asyncio.shield(drains), timeout)
        except TimeoutError:
            result.timed_out = True
            kill()
        await drains
        result.returncode = await proc.wait()
    except BaseException:
        kill()
        # Reap it even when cancelled, so nothing of the run outlives the call.
        await asyncio.shield(_reap(proc, drains))
        raise


async def _reap(proc: asyncio.subprocess.Process, drains: "asyncio.Future[Any]") -> None:
    with contextlib.suppress(Exception):
        await drains
    await proc.wait()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return False


async def wait_gone(pid: int | None, timeout: float = 5.0) -> bool:
    """Wait until the sandbox's pid 1 (bwrap's reaper) has exited.

    A dying pid-namespace init finishes exiting only after every other process in its
    namespace is gone, so this also means "the whole sandbox is dead" where no cgroup can
    tell. bwrap's outer process exits as soon as it has the command's status, so the reaper
    is orphaned and ends as a zombie of the host's init (hence the state check), or of this
    process when it is a container's pid 1: then it is reaped here.
    """
    if pid is None:
        return True
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    delay = 0.001
    while _alive(pid):
        if loop.time() > end:
            return False
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)
    with contextlib.suppress(ChildProcessError):
        # WNOHANG: never blocks. The pid is ours only if we are init (or a subreaper).
        os.waitpid(pid, os.WNOHANG)  # noqa: ASYNC222
    return True


def read_status(fd: int) -> bool:
    """Whether the compile step reported success on the status pipe (read end `fd`)."""
    try:
        os.set_blocking(fd, False)
        return os.read(fd, 16).startswith(b"ok")
    except BlockingIOError:
        return False
