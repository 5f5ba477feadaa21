"""The host-side runtime tree of one backend instance, and the sweep of crashed instances.

    <root>/                    /run/codeproxy as root (0711: sandbox uids traverse, not list)
      uids/<uid>.lock          uid leases (see uids.py)
      <instance>.lock          flock held while the instance lives
      <instance>/<sandbox>/    0711
        vol/                   the sandbox's volume (see datafs.py): data/ and run/
      <instance>/venv/         the sandbox venv, mounted read-only (see venv.py)
    <data_dir>/sandboxes/<instance>-<sandbox>.img   (exists only while being formatted)
    cgroups: <controller>/codeproxy/<scope>-<instance>-<sandbox>, where <scope> is a hash of
             the root's path

`--die-with-parent` kills a crashed instance's processes, but its sockets, mounts and cgroup
directories stay. An instance of this root whose lock nobody holds is dead, so `sweep`
removes all of it. Only instances of this root: several services (or test runs) share one
cgroup tree and perhaps one data dir, each with a root of its own or all in one root, and
none touches another's sandboxes. Nothing a dead instance left can stop the sweep.
"""

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import secrets
import stat
from pathlib import Path

from executor.local.cgroups import CgroupTree
from executor.local.datafs import mounts_under, remove_tree, unmount
from executor.local.uids import lock_file

log = logging.getLogger(__name__)

_INSTANCE = re.compile(r"^([0-9a-f]{8})(?:\.lock)?$")
# Unix socket paths are limited to 107 bytes; leave room for "/<inst>/<sbx>/run/k-5".
MAX_ROOT_LENGTH = 60


def default_root() -> Path:
    """`/run/codeproxy` for root; a per-user directory otherwise."""
    if os.geteuid() == 0:
        return Path("/run/codeproxy")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and len(runtime) < MAX_ROOT_LENGTH - 10:
        return Path(runtime) / "codeproxy"
    return Path(f"/tmp/codeproxy-{os.geteuid()}")


def _check_owned_dir(path: Path) -> None:
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise OSError(
            f"{path} must be a directory owned by uid {os.geteuid()} and writable only by it"
        )


class RuntimeRoot:
    """The runtime directory of this backend instance."""

    def __init__(self, root: Path, images: Path) -> None:
        if len(str(root)) > MAX_ROOT_LENGTH:
            raise OSError(
                f"runtime dir {root} is too long for unix socket paths "
                f"(max {MAX_ROOT_LENGTH} characters); set CODEPROXY_SANDBOX_RUNTIME_DIR"
            )
        self.root = root
        self.images = images
        self.instance = secrets.token_hex(4)
        self._lock_fd: int | None = None

    @property
    def dir(self) -> Path:
        """This instance's directory."""
        return self.root / self.instance

    @property
    def uid_locks(self) -> Path:
        """Where uid leases are locked (shared by every instance)."""
        return self.root / "uids"

    def open(self) -> None:
        """Create the root (checking nobody else controls it) and take the instance lock."""
        # 0711 as root so sandbox uids can reach their own dirs; 0700 for a single user.
        mode = 0o711 if os.geteuid() == 0 else 0o700
        for _ in range(3):
            self.root.mkdir(mode=mode, parents=True, exist_ok=True)
            _check_owned_dir(self.root)
            os.chmod(self.root, mode)
            try:
                self._open_instance(mode)
                return
            except FileNotFoundError:
                # Another instance removed the (empty) root just now; create it again.
                continue
        raise OSError(f"cannot create the runtime dir {self.root}")

    def _open_instance(self, mode: int) -> None:
        fd = lock_file(self.root / f"{self.instance}.lock")
        if fd is None:
            raise OSError(f"instance lock {self.instance} is taken")
        self._lock_fd = fd
        self.dir.mkdir()
        os.chmod(self.dir, mode)

    def sandbox_dir(self, sandbox: str) -> Path:
        """A sandbox's runtime directory (sockets, /mnt/data mount point)."""
        return self.dir / sandbox

    def image(self, sandbox: str) -> Path:
        """Where a sandbox's /mnt/data image is formatted (unlinked once mounted)."""
        return self.images / f"{self.instance}-{sandbox}.img"

    @property
    def scope(self) -> str:
        """Names this root in the cgroup tree, which every root on the host shares."""
        return hashlib.sha256(str(self.root.absolute()).encode()).hexdigest()[:8]

    def cgroup_name(self, sandbox: str) -> str:
        """A sandbox's cgroup name; its prefix tells the sweep whose it is."""
        return f"{self.scope}-{self.instance}-{sandbox}"

    def close(self) -> None:
        """Remove this instance's directory and lock (after every sandbox is closed)."""
        if self._lock_fd is None:
            return
        _remove_instance_dir(self.dir)
        (self.root / f"{self.instance}.lock").unlink(missing_ok=True)
        os.close(self._lock_fd)
        self._lock_fd = None
        # Leave no trace once the last instance is gone; rmdir fails while others live.
        for d in (self.uid_locks, self.root):
            with contextlib.suppress(OSError):
                d.rmdir()

    async def sweep(self, cgroups: CgroupTree | None) -> int:
        """Remove everything left by dead instances of this root; returns how many were swept.

        An instance belongs to this root when its lock file or directory is here; cgroups and
        images of instances found nowhere else (another root's, alive or not) are left alone.
        """
        try:
            names = os.listdir(self.root)
        except OSError:
            return 0
        candidates = {m.group(1) for n in names if (m := _INSTANCE.match(n))}
        candidates.discard(self.instance)
        swept = 0
        for inst in sorted(candidates):
            try:
                if await self._sweep_instance(inst, cgroups):
                    swept += 1
            except Exception:
                log.exception("sweeping sandbox backend instance %s failed; going on", inst)
        return swept

    async def _sweep_instance(self, inst: str, cgroups: CgroupTree | None) -> bool:
        lock = self.root / f"{inst}.lock"
        fd = lock_file(lock)
        if fd is None:
            return False  # alive
        try:
            log.warning("sweeping leftovers of a previous sandbox backend instance %s", inst)
            if cgroups is not None:
                prefix = f"{self.scope}-{inst}-"
                for name in cgroups.names():
                    if name.startswith(prefix):
                        await cgroups.get(name).remove()
            await asyncio.to_thread(_remove_instance_dir, self.root / inst)
            for image in self.images.glob(f"{inst}-*.img"):
                image.unlink(missing_ok=True)
            lock.unlink(missing_ok=True)
            return True
        finally:
            os.close(fd)


def _remove_instance_dir(path: Path) -> None:
    for point in mounts_under(path):
        unmount(point)
    if mounts_under(path):
        log.error("cannot unmount everything under %s; leaving it", path)
        return
    remove_tree(path)
