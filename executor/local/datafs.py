"""The host side of a sandbox's writable storage, and removing what sandboxes leave.

Everything a sandbox may write besides its tmpfs mounts lives on one volume: `/mnt/data` and
the kernel's socket directory `/run/kernel` are two folders of it. As root, the volume is a
sparse ext4 image (no journal, no reserved blocks) loop-mounted `nosuid,nodev`, so both share
its size cap; creating and mounting it takes about 25 ms. The image file is unlinked right
after mounting, so the loop device holds the only reference and the space comes back when it
is unmounted (mount's loop devices auto-clear). Without root, the volume is a plain directory
and nothing caps its size (the backend logs that once).

Sandboxes build what they like in there, e.g. trees thousands of levels deep, so removal never
recurses and never follows what it finds: it walks down and back up with one directory fd at
a time, and never raises (what cannot be removed is logged).
"""

import contextlib
import logging
import os
import re
import stat
import subprocess
import time
from pathlib import Path

log = logging.getLogger(__name__)

MOUNTINFO = Path("/proc/self/mountinfo")
LOOP_RELEASE_WAIT = 5.0
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def remove_tree(path: Path) -> None:
    """Remove `path` and everything below it, however deep; never raises.

    Only for trees no process writes to any more (a closed sandbox, a dead instance): the
    walk goes back up through "..", which a concurrent rename could redirect. It stays on
    `path`'s filesystem (a mount below is left alone) and, when not root, first gives itself
    the permissions a sandbox took away (chmod 000).
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        log.error("cannot remove %s: %s", path, e)
        return
    try:
        parent = os.open(path.parent, _DIR_FLAGS)
    except OSError as e:
        log.error("cannot remove %s: %s", path, e)
        return
    try:
        if stat.S_ISDIR(st.st_mode):
            _remove_dir(parent, path.name, st.st_dev, path)
        else:
            os.unlink(path.name, dir_fd=parent)
    except OSError as e:
        log.error("cannot remove %s: %s", path, e)
    finally:
        os.close(parent)


def _open_dir(parent: int, name: str) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent)
    except PermissionError:
        if os.geteuid() == 0:
            raise
        # Our own directory that the sandbox made unreadable (it ran as our uid).
        os.chmod(name, 0o700, dir_fd=parent)
        return os.open(name, _DIR_FLAGS, dir_fd=parent)


def _empty_out(fd: int, dev: int) -> list[str]:
    """Unlink every non-directory in the directory `fd`; its subdirectories to visit."""
    if os.geteuid() != 0:
        os.fchmod(fd, 0o700)
    subdirs = []
    with os.scandir(fd) as entries:
        for entry in entries:
            try:
                if not entry.is_dir(follow_symlinks=False):
                    os.unlink(entry.name, dir_fd=fd)
                elif entry.stat(follow_symlinks=False).st_dev == dev:
                    subdirs.append(entry.name)
                else:
                    log.error("not removing %s: a mount point", entry.name)
            except FileNotFoundError:
                continue
    return subdirs


def _remove_dir(top_parent: int, top: str, dev: int, where: Path) -> None:
    fd = _open_dir(top_parent, top)
    # One (name, subdirectories still to visit) per level from `top` down to `fd`.
    levels = [(top, _empty_out(fd, dev))]
    try:
        while levels:
            name, todo = levels[-1]
            if todo:
                child = todo.pop()
                try:
                    child_fd = _open_dir(fd, child)
                    subdirs = _empty_out(child_fd, dev)
                except OSError as e:
                    log.error("cannot empty a folder below %s: %s", where, e)
                    continue
                os.close(fd)
                fd = child_fd
                levels.append((child, subdirs))
                continue
            levels.pop()
            if not levels:
                break
            parent = os.open("..", _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = parent
            try:
                os.rmdir(name, dir_fd=fd)
            except OSError as e:
                log.error("cannot remove a folder below %s: %s", where, e)
    finally:
        os.close(fd)
    os.rmdir(top, dir_fd=top_parent)


def mounts_under(prefix: Path) -> list[Path]:
    """Mount points at or below `prefix`, deepest first (the order to unmount them)."""
    found = []
    base = str(prefix).rstrip("/")
    try:
        lines = MOUNTINFO.read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        parts = line.split(" ")
        if len(parts) < 5:
            continue
        point = _unescape(parts[4])
        if point == base or point.startswith(base + "/"):
            found.append(Path(point))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def _loop_device(point: Path) -> str | None:
    """The loop device (`loop5`) mounted at `point`, if one is."""
    try:
        lines = MOUNTINFO.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split(" ")
        if len(fields) > 9 and _unescape(fields[4]) == str(point):
            source = fields[fields.index("-") + 2]
            if source.startswith("/dev/loop"):
                return source.removeprefix("/dev/")
    return None


def _wait_released(device: str, timeout: float = LOOP_RELEASE_WAIT) -> None:
    """Wait until the kernel has detached an auto-clearing loop device (it does that in the
    background after the last unmount), so nothing of the sandbox outlives its teardown."""
    backing = Path("/sys/block") / device / "loop" / "backing_file"
    end = time.monotonic() + timeout
    while backing.exists():
        if time.monotonic() > end:
            log.warning("loop device %s is still attached", device)
            return
        time.sleep(0.01)


def unmount(point: Path) -> None:
    """Unmount, lazily if something still holds the mount busy."""
    done = subprocess.run(["umount", str(point)], capture_output=True, text=True, check=False)
    if done.returncode != 0 and point in mounts_under(point):
        log.warning("umount %s failed (%s); detaching lazily", point, done.stderr.strip())
        subprocess.run(["umount", "-l", str(point)], capture_output=True, check=False)


class SandboxVolume:
    """Where a sandbox writes on the host: `data` is its /mnt/data, `run` its /run/kernel.

    <path>/        the volume: an ext4 mount point (0711, root) or a plain directory
      data/        /mnt/data   (0700, the sandbox uid)
      run/         /run/kernel (0700, the sandbox uid): kernel sockets, connection file
    """

    def __init__(self, path: Path, *, mounted: bool) -> None:
        self.path = path
        self.mounted = mounted

    @property
    def data(self) -> Path:
        """The host directory behind /mnt/data."""
        return self.path / "data"

    @property
    def run(self) -> Path:
        """The host directory behind /run/kernel."""
        return self.path / "run"

    @classmethod
    def loop(cls, path: Path, image: Path, size: int, uid: int) -> "SandboxVolume":
        """Create, format and mount a fresh ext4 image of `size` bytes."""
        path.mkdir(mode=0o700)
        image.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            with open(image, "xb") as f:
                f.truncate(size)
            subprocess.run(
                ["mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-m", "0", str(image)],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
            subprocess.run(
                ["mount", "-o", "loop,nosuid,nodev,noatime", str(image), str(path)],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
        except subprocess.CalledProcessError as e:
            path.rmdir()
            raise OSError(f"{e.cmd[0]} failed: {e.stderr.strip()}") from e
        finally:
            image.unlink(missing_ok=True)
        volume = cls(path, mounted=True)
        try:
            with contextlib.suppress(OSError):
                (path / "lost+found").rmdir()
            # Sandbox uids pass through to their own folders; nobody else gets in.
            os.chmod(path, 0o711)
            volume._make_dirs(uid)
        except BaseException:
            volume.destroy()
            raise
        return volume

    @classmethod
    def plain(cls, path: Path, uid: int) -> "SandboxVolume":
        """Plain directories on the host disk, with no size cap."""
        path.mkdir(mode=0o711)
        volume = cls(path, mounted=False)
        volume._make_dirs(uid)
        return volume

    def _make_dirs(self, uid: int) -> None:
        for d in (self.data, self.run):
            d.mkdir(mode=0o700)
            if uid != os.getuid():
                os.chown(d, uid, uid)

    def destroy(self) -> None:
        """Unmount (the loop device and image go with it) and remove what is left."""
        device = _loop_device(self.path) if self.mounted else None
        for point in mounts_under(self.path):
            unmount(point)
        if mounts_under(self.path):
            log.error("%s is still mounted; leaving it", self.path)
            return
        if device is not None:
            _wait_released(device)
        remove_tree(self.path)
