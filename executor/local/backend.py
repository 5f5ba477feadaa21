"""The `local` sandbox backend: bubblewrap sandboxes on this host.

`start()` checks the prerequisites once (bwrap, the sandbox venv, seccomp, cgroups, loop
mounts), sweeps what a crashed previous instance left behind and proves that a sandbox can
start, so a misconfigured host fails at service start with a message that says what to do.

Privilege model. As root, every sandbox runs as its own unprivileged host uid (see uids.py):
cgroups are entered and the uid dropped between fork and exec, and bwrap then builds the
sandbox in an unprivileged user namespace. Everything bwrap binds must therefore be reachable
by that uid: the runtime tree is 0711, small files come in through memfds, and a venv below a
private directory (say /root, mode 0700) is exposed through a read-only overlay mount inside
the runtime tree rather than by opening up the user's home (which also keeps its host path out
of the sandbox's mountinfo). Not as root, sandboxes run as the
service's own uid, limited by rlimits unless a cgroup tree is writable.
"""

import asyncio
import dataclasses
import logging
import os
import resource
import secrets
import shutil
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import zmq.asyncio

from executor.backend import Sandbox, SandboxBackend
from executor.errors import SandboxUnavailable
from executor.local import bwrap
from executor.local.cgroups import CgroupTree
from executor.local.fontcache import font_cache
from executor.local.host import STARTUP_SOURCE, Host
from executor.local.runners import ProcessResult, run_process
from executor.local.runtime import RuntimeRoot, default_root
from executor.local.sandbox import LocalSandbox
from executor.local.seccomp import SeccompUnavailable, ensure_filter
from executor.local.uids import UidPool, accessible_by
from executor.local.venv import (
    check_venv,
    matplotlib_version,
    mount_readonly,
    python_flags,
    readable_by,
    unmount_readonly,
)
from executor.settings import MIB, ExecutorSettings

log = logging.getLogger(__name__)

INSTALL_BWRAP = "apt-get install -y bubblewrap"
# RLIMIT_AS turns huge allocations into MemoryError instead of an OOM kill. It is generous:
# an idle kernel maps ~740 MB, one with the whole sandbox venv imported ~2.6 GB, and node
# reserves more than 512 MB. So 2x the memory limit, and never below 6 GiB.
MIN_ADDRESS_SPACE = 6144 * MIB
STARTUP_CHECK_TIMEOUT = 60.0


class LocalBackend:
    """Creates LocalSandbox objects; implements executor.backend.SandboxBackend."""

    name = "local"

    def __init__(self, settings: ExecutorSettings) -> None:
        self.settings = settings
        self._host: Host | None = None
        self._runtime: RuntimeRoot | None = None
        self._venv_mount: Path | None = None
        self._cgroups: CgroupTree | None = None
        self._zmq: zmq.asyncio.Context | None = None
        self._spawner: ThreadPoolExecutor | None = None
        self._sandboxes: set[LocalSandbox] = set()

    @property
    def host(self) -> Host:
        """What the sandboxes share; SandboxUnavailable before start()."""
        if self._host is None:
            raise SandboxUnavailable("The local sandbox backend is not started.")
        return self._host

    async def start(self) -> None:
        """Check prerequisites, sweep a crashed instance's leftovers, prove bwrap works."""
        if self._host is not None:
            return
        try:
            await self._start()
        except BaseException:
            await self.aclose()
            raise

    async def _start(self) -> None:
        settings = self.settings
        bwrap_path = shutil.which("bwrap")
        if bwrap_path is None:
            raise SandboxUnavailable(
                f"bubblewrap (bwrap) is not installed. Install it with: {INSTALL_BWRAP}"
            )
        shm = min(bwrap.SHM_SIZE, settings.tmp_size_mb * MIB)
        if settings.tmp_size_mb * MIB + shm >= settings.memory_limit_mb * MIB:
            # tmpfs pages are charged to the sandbox's memory cgroup.
            log.warning(
                "tmp_size_mb (%d) plus /dev/shm is not below memory_limit_mb (%d): filling /tmp "
                "will get the sandbox OOM-killed instead of failing with ENOSPC",
                settings.tmp_size_mb,
                settings.memory_limit_mb,
            )
        venv = check_venv(settings.sandbox_venv)
        is_root = os.geteuid() == 0
        data_dir = settings.data_dir.absolute()
        data_dir.mkdir(parents=True, exist_ok=True)

        cgroups = None
        if settings.sandbox_cgroups:
            try:
                cgroups = CgroupTree.detect()
            except OSError as e:
                log.warning(
                    "cgroups unavailable (%s): limiting sandboxes with rlimits only; "
                    "cpu is not limited and memory only per process",
                    e,
                )
        self._cgroups = cgroups
        runtime = RuntimeRoot(
            settings.sandbox_runtime_dir or default_root(), data_dir / "sandboxes"
        )
        await asyncio.to_thread(runtime.open)
        self._runtime = runtime
        swept = await runtime.sweep(cgroups)
        if swept:
            log.warning("removed leftovers of %d crashed sandbox backend instance(s)", swept)

        try:
            seccomp = await asyncio.to_thread(ensure_filter, data_dir / "cache")
        except SeccompUnavailable as e:
            raise SandboxUnavailable(str(e)) from e

        uids = UidPool(runtime.uid_locks, settings.sandbox_uid_base) if is_root else None
        loop_data = is_root and all(shutil.which(t) for t in ("mkfs.ext4", "mount", "umount"))
        if not loop_data:
            log.warning(
                "/mnt/data of local sandboxes is a plain directory with no size limit "
                "(size-capped loop mounts need root and e2fsprogs)"
            )
        if uids is not None and not await asyncio.to_thread(
            accessible_by, runtime.dir, uids.base, "-x"
        ):
            raise SandboxUnavailable(
                f"The sandbox runtime dir {runtime.dir} is not reachable by unprivileged uids; "
                "set CODEPROXY_SANDBOX_RUNTIME_DIR below world-traversable directories "
                "(the default is /run/codeproxy)."
            )
        venv = await self._reachable_venv(venv, uids, runtime)
        self._zmq = zmq.asyncio.Context()
        self._spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sandbox-spawner")
        self._host = Host(
            settings=settings,
            bwrap=bwrap_path,
            venv=venv,
            python_flags=python_flags(venv),
            seccomp=seccomp,
            files=(),
            runtime=runtime,
            cgroups=cgroups,
            uids=uids,
            loop_data=loop_data,
            kernel_startup=STARTUP_SOURCE.read_bytes(),
            rlimits=self._rlimits(cgroups is None),
            zmq=self._zmq,
            spawner=self._spawner,
        )
        check = await self._run_bare(["true"])
        if check.returncode != 0:
            raise SandboxUnavailable(
                "bubblewrap cannot create a sandbox on this host (are unprivileged user "
                f"namespaces disabled?): {check.stderr.text().strip()[-500:]}"
            )
        version = matplotlib_version(venv)
        if version is not None:
            cache = await font_cache(venv, data_dir / "cache", version, self._run_bare)
            if cache is not None:
                self._host = dataclasses.replace(self._host, files=(cache,))
        log.info(
            "local sandbox backend ready (uids: %s, cgroups: %s, /mnt/data: %s)",
            "per sandbox" if uids else "service uid",
            ("v2" if cgroups.v2 else "v1") if cgroups else "off (rlimits)",
            "ext4 loop mount" if loop_data else "plain directory",
        )

    def _rlimits(self, without_cgroups: bool) -> tuple[tuple[int, int], ...]:
        settings = self.settings
        limits = [
            (resource.RLIMIT_CORE, 0),
            (resource.RLIMIT_AS, max(2 * settings.memory_limit_mb * MIB, MIN_ADDRESS_SPACE)),
        ]
        if without_cgroups:
            biggest = max(settings.tmp_size_mb, settings.data_size_mb) * MIB
            limits.append((resource.RLIMIT_FSIZE, biggest))
        return tuple(limits)

    async def _reachable_venv(self, venv: Path, uids: UidPool | None, runtime: RuntimeRoot) -> Path:
        """The venv path to bind: as root a read-only overlay of it in the runtime dir, which
        sandbox uids can reach and which hides the venv's host path; else the venv itself."""
        if uids is None:
            return venv
        target = runtime.dir / "venv"
        await asyncio.to_thread(mount_readonly, venv, target)
        self._venv_mount = target
        if not await asyncio.to_thread(readable_by, target, uids.base):
            raise SandboxUnavailable(
                f"The sandbox environment {venv} is not readable by other users even through a "
                f"read-only mount. Make it world-readable: chmod -R o+rX {venv}"
            )
        return target

    async def _run_bare(self, command: Sequence[str]) -> ProcessResult:
        """Run a command in a throwaway sandbox with no /mnt/data (start-up checks)."""
        host = self.host
        lease = host.uids.acquire() if host.uids is not None else None
        try:
            files = bwrap.SandboxFiles(
                venv=host.venv,
                data=None,
                seccomp=host.seccomp,
                tmp_size=self.settings.tmp_size_mb * MIB,
                files=host.files,
            )
            launch = bwrap.prepare(files, command, bwrap=host.bwrap, info=True)
            confinement = bwrap.Confinement(rlimits=host.rlimits, uid=lease.uid if lease else None)
            return await run_process(
                launch,
                preexec=confinement.preexec(),
                timeout=STARTUP_CHECK_TIMEOUT,
                max_output_bytes=32 * MIB,
            )
        finally:
            if lease is not None:
                lease.release()

    async def create(self) -> LocalSandbox:
        """Start a sandbox whose kernel is ready (about 0.6 s)."""
        sandbox = LocalSandbox(self.host, secrets.token_hex(6), on_close=self._sandboxes.discard)
        self._sandboxes.add(sandbox)
        try:
            await sandbox.start()
        except BaseException:
            self._sandboxes.discard(sandbox)
            raise
        return sandbox

    async def aclose(self) -> None:
        """Close every sandbox still open and remove this instance's traces on the host."""
        sandboxes, self._sandboxes = list(self._sandboxes), set()
        results = await asyncio.gather(*(s.close() for s in sandboxes), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                log.error("closing a sandbox failed: %r", result)
        if self._venv_mount is not None:
            await asyncio.to_thread(unmount_readonly, self._venv_mount)
            self._venv_mount = None
        if self._runtime is not None:
            await asyncio.to_thread(self._runtime.close)
            self._runtime = None
        if self._cgroups is not None:
            self._cgroups.remove_parents()
            self._cgroups = None
        if self._zmq is not None:
            self._zmq.destroy(linger=0)
            self._zmq = None
        if self._spawner is not None:
            self._spawner.shutdown(wait=False)
            self._spawner = None
        self._host = None


if TYPE_CHECKING:
    # mypy proves the contract: both classes satisfy executor.backend's protocols.
    def _conforms(backend: LocalBackend, sandbox: LocalSandbox) -> tuple[SandboxBackend, Sandbox]:
        return backend, sandbox
