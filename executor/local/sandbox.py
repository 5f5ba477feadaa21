"""One local sandbox: a bwrap'd ipykernel plus one-shot runs, sharing cgroups and /mnt/data.

Life of a sandbox: lease a host uid, create its dirs, cgroup and /mnt/data volume, start the
kernel and wait for kernel_info. A run past its deadline is interrupted; if it is still running
after the grace period (or the kernel died, e.g. OOM), the bwrap process is SIGKILLed, the
cgroup waited empty and a fresh kernel started in the same cgroup and /mnt/data. Recovery
runs shielded, so cancelling `run()` never leaves a half-restarted sandbox behind.
"""

import asyncio
import contextlib
import logging
import os
import resource
import subprocess
from collections.abc import AsyncIterable, AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

from executor.api import relative_data_path
from executor.errors import ExecutorError, SandboxUnavailable
from executor.languages import Language
from executor.local import bwrap
from executor.local.cgroups import Limits, SandboxCgroup
from executor.local.datafs import SandboxVolume, remove_tree
from executor.local.files import DataDir, FileStream
from executor.local.host import KERNEL_STARTUP, Host
from executor.local.kernel import Cell, ConnectionInfo, KernelClient, KernelNotReady
from executor.local.runners import (
    OUTER_KILL_DELAY,
    PROGRAMS,
    SandboxPid,
    read_status,
    run_process,
    wait_gone,
)
from executor.local.uids import UidLease
from executor.models import ExecutionError, FileEntry, RunOutcome
from executor.outcomes import (
    compile_error,
    died_error,
    oom_killed_error,
    output_limit_error,
    timeout_error,
)
from executor.output import FLOOD_FACTOR, RingBuffer
from executor.settings import MIB

log = logging.getLogger(__name__)

KILL_WAIT = 5.0


def _count_tasks(uid: int) -> int:
    """Threads currently owned by `uid` (RLIMIT_NPROC counts them)."""
    count = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    count += len(os.listdir(f"/proc/{entry.name}/task"))
            except OSError:
                continue
    return count


class LocalSandbox:
    """A Sandbox (see executor.backend) backed by bubblewrap on this host."""

    def __init__(
        self,
        host: Host,
        sandbox_id: str,
        *,
        on_close: Callable[["LocalSandbox"], None] | None = None,
    ) -> None:
        self._host = host
        self._on_close = on_close
        self._settings = host.settings
        self._id = sandbox_id
        self._dir = host.runtime.sandbox_dir(sandbox_id)
        self._lease: UidLease | None = None
        self._uid = os.geteuid()
        self._cgroup: SandboxCgroup | None = None
        self._volume: SandboxVolume | None = None
        self._files: DataDir | None = None
        self._confinement = bwrap.Confinement()
        self._proc: subprocess.Popen[bytes] | None = None
        # The kernel sandbox's pid 1 (bwrap's reaper), from --info-fd.
        self._sandbox_pid = SandboxPid()
        self._client: KernelClient | None = None
        # Why the kernel was killed between runs (it flooded or broke its sockets), if it was.
        self._kernel_broken: str | None = None
        self._kernel_log = RingBuffer()
        self._reader: tuple[asyncio.AbstractEventLoop, int] | None = None
        self._lock = asyncio.Lock()
        self._recovery: asyncio.Task[None] | None = None
        self._closed = False
        self._dead = False
        self._closing: asyncio.Task[None] | None = None

    @property
    def id(self) -> str:
        """A random id, unique on this host."""
        return self._id

    @property
    def alive(self) -> bool:
        """False once closed, or when a restart failed."""
        return not (self._closed or self._dead)

    @property
    def uid(self) -> int:
        """The host uid the sandbox's processes run as."""
        return self._uid

    @property
    def cgroup(self) -> SandboxCgroup | None:
        """The sandbox's cgroup, None when limited by rlimits only."""
        return self._cgroup

    @property
    def data_path(self) -> Path:
        """The host directory behind /mnt/data."""
        assert self._volume is not None
        return self._volume.data

    @property
    def _run_dir(self) -> Path:
        """The host directory behind /run/kernel."""
        assert self._volume is not None
        return self._volume.run

    @property
    def host_dir(self) -> Path:
        """The sandbox's runtime directory on the host."""
        return self._dir

    def kernel_pids(self) -> list[int]:
        """Host pids of the bwrap process and everything below it (for measurements)."""
        if self._cgroup is not None:
            return self._cgroup.pids()
        return [self._proc.pid] if self._proc is not None else []

    # Life cycle

    async def start(self) -> None:
        """Create everything the sandbox needs and start its kernel."""
        try:
            await asyncio.to_thread(self._setup)
            await self._start_kernel()
        except BaseException as e:
            await self.close()
            if isinstance(e, ExecutorError | asyncio.CancelledError):
                raise
            raise SandboxUnavailable(f"Could not start a sandbox: {e}") from e

    def _setup(self) -> None:
        host, settings = self._host, self._settings
        if host.uids is not None:
            self._lease = host.uids.acquire()
            self._uid = self._lease.uid
        self._dir.mkdir()
        # Explicitly, whatever the umask: sandbox uids must traverse it to their own dirs.
        os.chmod(self._dir, 0o711)
        procs: list[str] = []
        if host.cgroups is not None:
            limits = Limits(settings.memory_limit_mb * MIB, settings.pids_limit, settings.cpu_quota)
            self._cgroup = host.cgroups.create(host.runtime.cgroup_name(self._id), limits)
            procs = self._cgroup.procs_files
        rlimits = list(host.rlimits)
        if host.cgroups is None:
            nproc = settings.pids_limit
            if self._lease is None:
                # Shared uid: the limit counts every thread the service user already runs.
                nproc += _count_tasks(self._uid)
            rlimits.append((resource.RLIMIT_NPROC, nproc))
        self._confinement = bwrap.Confinement(procs, rlimits, self._uid)
        path = self._dir / "vol"
        if host.loop_data:
            image = host.runtime.image(self._id)
            size = settings.data_size_mb * MIB
            self._volume = SandboxVolume.loop(path, image, size, self._uid)
        else:
            self._volume = SandboxVolume.plain(path, self._uid)
        self._files = DataDir(self._volume.data, self._uid)

    def _sandbox_files(
        self, *, kernel: bool, extra: tuple[tuple[bytes, str], ...] = ()
    ) -> bwrap.SandboxFiles:
        return bwrap.SandboxFiles(
            venv=self._host.venv,
            data=self.data_path,
            seccomp=self._host.seccomp,
            tmp_size=self._settings.tmp_size_mb * MIB,
            run_dir=self._run_dir if kernel else None,
            files=self._host.files + extra,
            ro_files=((self._host.kernel_startup, KERNEL_STARTUP),) if kernel else (),
        )

    def _write_connection_file(self, info: ConnectionInfo) -> None:
        for entry in os.scandir(self._run_dir):
            os.unlink(entry.path)
        fd = os.open(
            self._run_dir / "conn.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600
        )
        try:
            os.write(fd, info.sandbox_file())
            if self._uid != os.geteuid():
                os.fchown(fd, self._uid, self._uid)
        finally:
            os.close(fd)

    async def _start_kernel(self) -> None:
        info = ConnectionInfo(self._run_dir)
        await asyncio.to_thread(self._write_connection_file, info)
        launch = bwrap.prepare(
            self._sandbox_files(kernel=True),
            self._host.kernel_command(),
            bwrap=self._host.bwrap,
            info=True,
        )
        confinement = self._confinement.preexec()

        def spawn() -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                launch.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                pass_fds=launch.pass_fds,
                preexec_fn=confinement,
                start_new_session=True,
                env=bwrap.BWRAP_ENV,
            )

        # On the backend's spawner thread (see Host.spawner), never a passing worker.
        spawned = asyncio.get_running_loop().run_in_executor(self._host.spawner, spawn)
        try:
            try:
                self._proc = await asyncio.shield(spawned)
            except asyncio.CancelledError:
                # The fork goes on in its thread; keep the process so teardown kills it.
                self._proc = await spawned
                raise
        except BaseException:
            launch.close()
            raise
        launch.close_child_fds()
        self._watch_kernel_output()
        if self._closed:
            launch.close()
            raise SandboxUnavailable("The sandbox was closed while starting.")
        init_pid = await asyncio.to_thread(launch.read_info)
        self._sandbox_pid = SandboxPid(init_pid)
        if init_pid is None:
            await self._wait_exit()
            raise SandboxUnavailable(
                f"bwrap failed to start the sandbox: {self._kernel_log.tail()}"
            )
        self._kernel_broken = None
        self._client = KernelClient(
            self._host.zmq,
            info,
            max_output_bytes=self._settings.max_output_bytes,
            on_broken=self._on_kernel_broken,
        )
        try:
            await self._client.wait_ready(self._kernel_alive, self._settings.sandbox_start_timeout)
        except KernelNotReady as e:
            raise SandboxUnavailable(
                f"The Python kernel did not start: {e}. Output: {self._kernel_log.tail()}"
            ) from e

    def _watch_kernel_output(self) -> None:
        """Drain the kernel's own stdout/stderr into a ring buffer (never a file: see notes)."""
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        os.set_blocking(fd, False)
        loop = asyncio.get_running_loop()

        def readable() -> None:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if data:
                self._kernel_log.write(data)
            else:
                loop.remove_reader(fd)

        loop.add_reader(fd, readable)
        self._reader = (loop, fd)

    def _on_kernel_broken(self, reason: str) -> None:
        """The kernel flooded or broke a socket between runs: kill it; the next run restarts."""
        if self._closed or self._kernel_broken is not None:
            return
        log.warning("sandbox %s: killing its kernel: %s", self._id, reason)
        self._kernel_broken = reason
        self._kill_kernel()

    def _kernel_alive(self) -> bool:
        return not self._closed and self._proc is not None and self._proc.poll() is None

    def _kill_kernel(self) -> None:
        """SIGKILL the kernel's sandbox through its pid 1, or its bwrap if that is unknown."""
        if self._proc is not None and self._proc.poll() is None and not self._sandbox_pid.kill():
            self._proc.kill()

    async def _wait_exit(self, timeout: float = KILL_WAIT) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(proc.wait, timeout)

    async def _stop_kernel(self) -> None:
        """SIGKILL the bwrap process and wait until nothing of the kernel is left."""
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()
        proc = self._proc
        if proc is not None:
            self._kill_kernel()
            await self._wait_exit(OUTER_KILL_DELAY)
            if proc.poll() is None:
                proc.kill()
                await self._wait_exit(KILL_WAIT)
            if proc.poll() is None:
                log.error("sandbox %s: bwrap pid %d survived SIGKILL", self._id, proc.pid)
        if self._reader is not None:
            loop, fd = self._reader
            loop.remove_reader(fd)
            self._reader = None
        if proc is not None and proc.stdout is not None:
            proc.stdout.close()
        if self._cgroup is not None and not await self._cgroup.wait_empty(KILL_WAIT):
            log.error("sandbox %s: processes %s survived", self._id, self._cgroup.pids())
        if not await wait_gone(self._sandbox_pid.pid, KILL_WAIT):
            log.error("sandbox %s: sandbox pid 1 (%s) survived", self._id, self._sandbox_pid.pid)
        self._sandbox_pid.close()
        self._proc = None

    async def _restart(self) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            await self._stop_kernel()
            if self._closed:
                return
            await self._start_kernel()
        except BaseException:
            self._dead = True
            raise
        log.info(
            "sandbox %s: kernel restarted in %.0f ms", self._id, (loop.time() - started) * 1000
        )

    async def _recover(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a recovery step to completion even if the caller is cancelled meanwhile."""
        task = asyncio.ensure_future(coro)
        self._recovery = task
        await asyncio.shield(task)
        self._recovery = None

    async def _await_recovery(self) -> None:
        task, self._recovery = self._recovery, None
        if task is not None:
            try:
                await task
            except Exception as e:
                log.warning("sandbox %s: earlier recovery failed: %s", self._id, e)

    async def close(self) -> None:
        """Kill everything, remove cgroup, mount and dirs; idempotent, survives cancellation."""
        if self._closing is None:
            self._closed = True
            self._closing = asyncio.ensure_future(self._teardown())
        await asyncio.shield(self._closing)

    async def _teardown(self) -> None:
        try:
            # Kill first: a recovery in progress then fails fast instead of finishing a
            # restart nobody wants (it checks _closed, and its kernel is gone).
            self._kill_kernel()
            await self._await_recovery()
            await self._stop_kernel()
        finally:
            await self._release_host()

    async def _release_host(self) -> None:
        """Remove cgroup, volume and dirs, then give the uid back: each step whatever the
        others did, since a step that stops here leaves the host something forever."""
        try:
            if self._cgroup is not None:
                await self._cgroup.remove()
            await asyncio.to_thread(self._remove_dirs)
        except Exception:
            log.exception("sandbox %s: removing it from the host failed", self._id)
        finally:
            # Last: no process of this uid is left, so the next holder starts clean.
            if self._lease is not None:
                self._lease.release()
                self._lease = None
            if self._on_close is not None:
                self._on_close(self)

    def _remove_dirs(self) -> None:
        if self._volume is not None:
            self._volume.destroy()
        remove_tree(self._dir)

    # Running code

    async def run(
        self, code: str, language: Language, *, timeout: float, max_output_bytes: int
    ) -> RunOutcome:
        """See executor.backend.Sandbox.run; runs are serialised per sandbox."""
        if not self.alive:
            raise SandboxUnavailable("The sandbox is closed.")
        async with self._lock:
            await self._await_recovery()
            if not self.alive:
                raise SandboxUnavailable("The sandbox is closed.")
            loop = asyncio.get_running_loop()
            started = loop.time()
            if language is Language.PYTHON:
                outcome = await self._run_python(code, timeout, max_output_bytes)
            else:
                outcome = await self._run_program(code, language, timeout, max_output_bytes)
            outcome.duration_ms = int((loop.time() - started) * 1000)
            return outcome

    def _oom_kills(self) -> int:
        return self._cgroup.oom_kills() if self._cgroup is not None else 0

    async def _run_python(self, code: str, timeout: float, max_output_bytes: int) -> RunOutcome:
        state_lost = False
        note = ""
        if self._kernel_broken is not None:
            note = f"[the sandbox was restarted before this run: {self._kernel_broken}]\n"
            await self._recover(self._restart())
            state_lost = True
        elif not self._kernel_alive():
            log.warning("sandbox %s: kernel died while idle; restarting", self._id)
            await self._recover(self._restart())
            state_lost = True
        client = self._client
        assert client is not None
        oom_before = self._oom_kills()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        grace = self._settings.interrupt_grace
        cell = await client.execute(code, max_output_bytes)
        try:
            ending = await client.collect(
                cell, deadline=deadline, grace=grace, alive=self._kernel_alive
            )
        except asyncio.CancelledError:
            await self._recover(self._settle(client, cell))
            raise
        error = cell.error
        if ending != "done":
            oom = self._oom_kills() > oom_before
            if self._closed:
                raise SandboxUnavailable("The sandbox was closed during the run.")
            await self._recover(self._restart())
            state_lost = True
        if ending == "died":
            error = died_error(oom, self._settings.memory_limit_mb)
        elif cell.timed_out:
            error = timeout_error(timeout, state_lost)
        elif cell.flooded:
            # Reaching the flood cap means the kernel's soft cap (or our interrupt) stopped
            # the code, whatever error the kernel itself reported.
            ending_text = (
                "was stopped; the sandbox was restarted." if state_lost else "was stopped."
            )
            error = output_limit_error(FLOOD_FACTOR * max_output_bytes, ending_text)
        if cell.results_dropped:
            cell.stderr.add_text(f"\n[{cell.results_dropped} rich outputs dropped: too large]\n")
        return RunOutcome(
            stdout=cell.stdout.text(),
            stderr=note + cell.stderr.text(),
            stdout_truncated=cell.stdout.truncated,
            stderr_truncated=cell.stderr.truncated or cell.results_dropped > 0,
            results=cell.results,
            error=error,
            timed_out=cell.timed_out,
            state_lost=state_lost,
        )

    async def _settle(self, client: KernelClient, cell: Cell) -> None:
        """After a cancelled run: interrupt, and kill+restart if the code does not stop."""
        if self._kernel_alive() and not cell.done:
            loop = asyncio.get_running_loop()
            if cell.kill_at is None:
                await client.interrupt()
                cell.kill_at = loop.time() + self._settings.interrupt_grace
            ending = await client.collect(
                cell, deadline=float("inf"), grace=0, alive=self._kernel_alive
            )
            if ending == "done":
                return
        if not self._closed:
            await self._restart()

    async def _run_program(
        self, code: str, language: Language, timeout: float, max_output_bytes: int
    ) -> RunOutcome:
        program = PROGRAMS[language]
        status_r, status_w = os.pipe() if program.compiler else (None, None)
        try:
            files = self._sandbox_files(kernel=False, extra=((code.encode(), program.source),))
            launch = bwrap.prepare(files, program.argv(status_w), bwrap=self._host.bwrap, info=True)
        except BaseException:
            for fd in (status_r, status_w):
                if fd is not None:
                    os.close(fd)
            raise

        oom_before = self._oom_kills()
        try:
            result = await run_process(
                launch,
                extra_fds=[status_w] if status_w is not None else [],
                preexec=self._confinement.preexec(),
                timeout=timeout,
                max_output_bytes=max_output_bytes,
            )
            compiled = read_status(status_r) if status_r is not None else True
        finally:
            if status_r is not None:
                os.close(status_r)
        rc = result.returncode
        exit_code = (
            None
            if rc is None or result.timed_out or result.flooded
            else (rc if rc >= 0 else 128 - rc)
        )
        error: ExecutionError | None = None
        if result.timed_out:
            error = timeout_error(timeout, state_lost=False)
        elif result.flooded:
            error = output_limit_error(FLOOD_FACTOR * max_output_bytes, "was killed.")
        elif not compiled and rc != 0:
            error = compile_error(result.stderr.text())
        elif rc != 0 and self._oom_kills() > oom_before:
            error = oom_killed_error(self._settings.memory_limit_mb)
        return RunOutcome(
            stdout=result.stdout.text(),
            stderr=result.stderr.text(),
            stdout_truncated=result.stdout.truncated,
            stderr_truncated=result.stderr.truncated,
            error=error,
            exit_code=exit_code,
            timed_out=result.timed_out,
        )

    async def interrupt(self) -> None:
        """Interrupt the running Python cell (as a Jupyter interrupt would)."""
        if self._client is not None and self._kernel_alive():
            await self._client.interrupt()

    # Files

    def _data_dir(self) -> DataDir:
        if self._files is None or self._closed:
            raise SandboxUnavailable("The sandbox is closed.")
        return self._files

    async def write_file(
        self, path: str, chunks: AsyncIterable[bytes], *, max_bytes: int
    ) -> FileEntry:
        """See executor.backend.Sandbox.write_file; the file belongs to the sandbox uid."""
        rel = relative_data_path(path)
        pending = await asyncio.to_thread(self._data_dir().begin_write, rel)
        try:
            async for chunk in chunks:
                await asyncio.to_thread(pending.write, chunk, max_bytes)
            return await asyncio.to_thread(pending.commit)
        except BaseException:
            await asyncio.shield(asyncio.to_thread(pending.abort))
            raise

    async def read_file(self, path: str) -> AsyncIterator[bytes]:
        """See executor.backend.Sandbox.read_file."""
        rel = relative_data_path(path)
        fd = await asyncio.to_thread(self._data_dir().open_read, rel)
        return FileStream(fd)

    async def list_files(self) -> list[FileEntry]:
        """See executor.backend.Sandbox.list_files."""
        return await asyncio.to_thread(self._data_dir().list)
