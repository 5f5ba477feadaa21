"""One unprivileged host uid per live sandbox, leased with a lock file.

When the service runs as root, each sandbox's processes run as their own host uid (from a high
range with no passwd entry), so an escape lands in an account that owns nothing but that
sandbox's files. The lease is an flock on `<dir>/<uid>.lock`: the kernel drops it when the
holder dies, so several services on one host (or a crashed one) never hand out a uid twice.
"""

import fcntl
import logging
import os
import pwd
import subprocess
from pathlib import Path

log = logging.getLogger(__name__)

SUBID_FILES = (Path("/etc/subuid"), Path("/etc/subgid"))


def _subid_ranges() -> list[range]:
    """uid/gid ranges delegated to rootless containers; a sandbox must not share them."""
    ranges = []
    for path in SUBID_FILES:
        try:
            lines = path.read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            parts = line.strip().split(":")
            if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                start = int(parts[1])
                ranges.append(range(start, start + int(parts[2])))
    return ranges


def lock_file(path: Path) -> int | None:
    """An fd holding an exclusive flock on `path`, or None if another process holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        # The holder unlinked it between our open and flock: lock the new file instead.
        os.close(fd)


def accessible_by(path: Path, uid: int, test: str) -> bool:
    """Whether `uid`, with no groups, passes `test(1) <test> path` (e.g. "-r", "-x")."""
    if uid == os.geteuid():
        return True

    def drop() -> None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)

    done = subprocess.run(
        ["test", test, str(path)], preexec_fn=drop, check=False, capture_output=True
    )
    return done.returncode == 0


class UidLease:
    """A uid held by this process until `release()`."""

    def __init__(self, uid: int, fd: int, path: Path) -> None:
        self.uid = uid
        self._fd: int | None = fd
        self._path = path

    def release(self) -> None:
        """Give the uid back (once none of its processes is left)."""
        # Unlinked while still locked; acquire() re-checks the inode, so a process that
        # opened the old file before the unlink cannot hold the same uid as a newcomer.
        if self._fd is not None:
            self._path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None


class UidPool:
    """Leases uids `base .. base+count-1`, skipping any uid that already means something."""

    def __init__(self, lock_dir: Path, base: int, count: int = 10_000) -> None:
        self.lock_dir = lock_dir
        self.base = base
        self.count = count
        self._taken = _subid_ranges()

    def _usable(self, uid: int) -> bool:
        try:
            pwd.getpwuid(uid)
            return False
        except KeyError:
            pass
        return not any(uid in r for r in self._taken)

    def acquire(self) -> UidLease:
        """Lease the lowest free uid; raises OSError when all are taken."""
        self.lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for uid in range(self.base, self.base + self.count):
            if not self._usable(uid):
                continue
            path = self.lock_dir / f"{uid}.lock"
            try:
                fd = lock_file(path)
            except FileNotFoundError:
                # Another instance removed the empty lock dir while closing; recreate it.
                self.lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
                fd = lock_file(path)
            if fd is not None:
                return UidLease(uid, fd, path)
        raise OSError(f"all sandbox uids {self.base}..{self.base + self.count - 1} are in use")
