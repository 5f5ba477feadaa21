"""The hardened bubblewrap command line, and how to hand it to bwrap without leaking it.

Every option goes through `--args FD` (NUL-separated), so `/proc/1/cmdline` inside the sandbox
shows only `bwrap --args N <command>`: no host path and no environment value. Small files
(passwd, group, source code, the matplotlib font cache) reach the sandbox through memfds and
`--ro-bind-data`/`--file`, which needs no host path the sandbox uid could traverse.
"""

import json
import os
import resource
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

KERNEL_RUN_DIR = "/run/kernel"
SANDBOX_VENV = "/opt/venv"
SANDBOX_DATA = "/mnt/data"
SANDBOX_UID = 1000
SHM_SIZE = 64 * 1024 * 1024

# The environment bwrap itself runs with. Not the service's: --clearenv only affects the
# command, while bwrap's reaper (pid 1 in the sandbox, same uid) keeps bwrap's environment and
# the sandbox can read it from /proc/1/environ.
BWRAP_ENV: dict[str, str] = {}

PASSWD = f"sandbox:x:{SANDBOX_UID}:{SANDBOX_UID}:sandbox:/tmp:/bin/sh\n".encode()
GROUP = f"sandbox:x:{SANDBOX_UID}:\n".encode()

# The only environment a sandbox gets (after --clearenv).
SANDBOX_ENV: dict[str, str] = {
    "PATH": f"{SANDBOX_VENV}/bin:/usr/local/bin:/usr/bin:/bin",
    "HOME": "/tmp",
    "LANG": "C.UTF-8",
    "IPYTHONDIR": "/tmp/.ipython",
    "JUPYTER_RUNTIME_DIR": "/tmp/.jupyter",
    "JUPYTER_PLATFORM_DIRS": "1",
    "MPLCONFIGDIR": "/tmp/.mpl",
    "MPLBACKEND": "module://matplotlib_inline.backend_inline",
    # BLAS/OpenMP start one thread per host CPU, and pids.max counts threads.
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    # debugpy (pulled in by ipykernel) warns about frozen modules on every start otherwise.
    "PYDEVD_DISABLE_FILE_VALIDATION": "1",
}


@dataclass(frozen=True)
class SandboxFiles:
    """Host paths and sizes that shape one sandbox's filesystem."""

    venv: Path
    # None: an empty read-only /mnt/data (start-up checks that need no sandbox).
    data: Path | None
    seccomp: Path
    tmp_size: int
    run_dir: Path | None = None
    # Extra files copied into the sandbox's tmpfs: (content, absolute destination).
    files: Sequence[tuple[bytes, str]] = ()
    # Read-only files outside the tmpfs (e.g. /opt/codeproxy/...): (content, destination).
    ro_files: Sequence[tuple[bytes, str]] = ()


@dataclass
class Launch:
    """A prepared bwrap invocation: argv plus the fds the child must inherit."""

    argv: list[str]
    pass_fds: list[int]
    info_fd: int | None
    _child_fds: list[int] = field(default_factory=list)

    def close_child_fds(self) -> None:
        """Close the parent's copies of the child's fds (after spawning, or on failure)."""
        for fd in self._child_fds:
            os.close(fd)
        self._child_fds.clear()

    def close(self) -> None:
        """Close everything, including the info pipe's read end."""
        self.close_child_fds()
        if self.info_fd is not None:
            os.close(self.info_fd)
            self.info_fd = None

    def read_info(self) -> int | None:
        """Block until bwrap reports its sandbox; return the host pid of the sandbox's pid 1.

        Reads to EOF: a single read can return partial JSON. None means bwrap failed.
        """
        if self.info_fd is None:
            return None
        chunks = []
        while chunk := os.read(self.info_fd, 4096):
            chunks.append(chunk)
        os.close(self.info_fd)
        self.info_fd = None
        try:
            pid = json.loads(b"".join(chunks))["child-pid"]
        except (ValueError, KeyError, TypeError):
            return None
        return int(pid)


def _memfd(data: bytes) -> int:
    fd = os.memfd_create("bwrap-data")
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def prepare(
    files: SandboxFiles, command: Sequence[str], *, bwrap: str, info: bool = False
) -> Launch:
    """Build the hardened bwrap argv for `command`, with all options behind `--args`."""
    fds: list[int] = []

    def data_fd(data: bytes) -> str:
        fds.append(_memfd(data))
        return str(fds[-1])

    try:
        opts = [
            "--unshare-all",
            "--unshare-user",
            "--disable-userns",
            "--die-with-parent",
            "--new-session",
            "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
            "--hostname", "sandbox",
            "--ro-bind", "/usr", "/usr",
            "--symlink", "usr/bin", "/bin",
            "--symlink", "usr/sbin", "/sbin",
            "--symlink", "usr/lib", "/lib",
            "--symlink", "usr/lib64", "/lib64",
            "--ro-bind", "/etc/ld.so.cache", "/etc/ld.so.cache",
            "--ro-bind-try", "/etc/alternatives", "/etc/alternatives",
            "--ro-bind-try", "/etc/fonts", "/etc/fonts",
            "--ro-bind", str(files.venv), SANDBOX_VENV,
            "--proc", "/proc",
            "--dev", "/dev",
            "--size", str(files.tmp_size), "--tmpfs", "/tmp",
            "--size", str(min(SHM_SIZE, files.tmp_size)), "--tmpfs", "/dev/shm",
        ]  # fmt: skip
        if files.data is not None:
            opts += ["--bind", str(files.data), SANDBOX_DATA]
        else:
            opts += ["--dir", SANDBOX_DATA]
        if files.run_dir is not None:
            opts += ["--bind", str(files.run_dir), KERNEL_RUN_DIR]
        opts += ["--chdir", SANDBOX_DATA, "--clearenv"]
        for key, value in SANDBOX_ENV.items():
            opts += ["--setenv", key, value]
        for content, dest in files.files:
            opts += ["--perms", "0644", "--file", data_fd(content), dest]
        for content, dest in files.ro_files:
            opts += ["--perms", "0644", "--ro-bind-data", data_fd(content), dest]
        opts += ["--perms", "0644", "--ro-bind-data", data_fd(PASSWD), "/etc/passwd"]
        opts += ["--perms", "0644", "--ro-bind-data", data_fd(GROUP), "/etc/group"]
        fds.append(os.open(files.seccomp, os.O_RDONLY | os.O_CLOEXEC))
        opts += ["--seccomp", str(fds[-1])]
        info_read: int | None = None
        if info:
            info_read, info_write = os.pipe()
            fds.append(info_write)
            opts += ["--info-fd", str(info_write)]
        # Last, after every mount: otherwise bwrap's own tmpfs at / and /dev stay writable
        # and unbounded.
        opts += ["--remount-ro", "/dev", "--remount-ro", "/"]
        args_fd = data_fd(("\0".join(opts) + "\0").encode())
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return Launch(
        argv=[bwrap, "--args", args_fd, *command],
        pass_fds=list(fds),
        info_fd=info_read,
        _child_fds=fds,
    )


@dataclass(frozen=True)
class Confinement:
    """What the child does between fork and exec: cgroups, rlimits, then drop to the uid."""

    cgroup_procs: Sequence[str] = ()
    rlimits: Sequence[tuple[int, int]] = ()
    uid: int | None = None

    def preexec(self) -> Callable[[], None]:
        """The preexec_fn for Popen.

        Popen(user=...) switches uid before preexec_fn runs, and only root may move a process
        into our cgroups, so the whole sequence happens here, in this order.
        """
        procs, limits, uid = list(self.cgroup_procs), list(self.rlimits), self.uid

        def run() -> None:
            pid = str(os.getpid()).encode()
            for path in procs:
                fd = os.open(path, os.O_WRONLY)
                try:
                    os.write(fd, pid)
                finally:
                    os.close(fd)
            for res, value in limits:
                resource.setrlimit(res, (value, value))
            if uid is not None and uid != os.getuid():
                os.setgroups([])
                os.setresgid(uid, uid, uid)
                os.setresuid(uid, uid, uid)

        return run
