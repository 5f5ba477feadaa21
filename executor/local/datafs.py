"""The host side of a sandbox's /mnt/data: a size-capped ext4 loop mount, or a plain directory.

As root, each sandbox gets a sparse ext4 image (no journal, no reserved blocks) loop-mounted
`nosuid,nodev` on its own mount point; creating and mounting it takes about 25 ms. The image
file is unlinked right after mounting, so the loop device holds the only reference and the
space comes back when it is unmounted (mount's loop devices auto-clear). Without root, a plain
directory is used and nothing caps its size (the backend logs that once).
"""

import logging
import os
import re
import shutil
import subprocess
from pathlib import Path

log = logging.getLogger(__name__)

MOUNTINFO = Path("/proc/self/mountinfo")


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def remove_tree(path: Path) -> None:
    """rmtree that also gets through directories the sandbox made unreadable (chmod 000)."""
    shutil.rmtree(path, ignore_errors=True)
    if not os.path.lexists(path):
        return
    # Only a non-root owner gets here (root ignores directory modes), and only after the
    # sandbox's processes are gone, so nothing swaps a directory for a symlink meanwhile.
    os.chmod(path, 0o700)
    for top, dirs, _files in os.walk(path):
        for d in dirs:
            sub = os.path.join(top, d)
            if not os.path.islink(sub):
                os.chmod(sub, 0o700)
    shutil.rmtree(path, ignore_errors=True)


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


def unmount(point: Path) -> None:
    """Unmount, lazily if something still holds the mount busy."""
    done = subprocess.run(["umount", str(point)], capture_output=True, text=True, check=False)
    if done.returncode != 0 and point in mounts_under(point):
        log.warning("umount %s failed (%s); detaching lazily", point, done.stderr.strip())
        subprocess.run(["umount", "-l", str(point)], capture_output=True, check=False)


class DataVolume:
    """The host directory bound at /mnt/data in one sandbox."""

    def __init__(self, path: Path, *, mounted: bool) -> None:
        self.path = path
        self.mounted = mounted

    @classmethod
    def loop(cls, path: Path, image: Path, size: int, uid: int) -> "DataVolume":
        """Create, format and mount a fresh ext4 image of `size` bytes owned by `uid`."""
        path.mkdir(mode=0o700)
        image.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            with open(image, "xb") as f:
                f.truncate(size)
            subprocess.run(
                ["mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-m", "0",
                 "-E", f"root_owner={uid}:{uid}", str(image)],
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
        try:
            (path / "lost+found").rmdir()
            # Only the sandbox uid needs in; other host users must not read its files.
            os.chmod(path, 0o700)
        except OSError:
            pass
        return cls(path, mounted=True)

    @classmethod
    def plain(cls, path: Path, uid: int) -> "DataVolume":
        """A plain directory on the host disk, with no size cap."""
        path.mkdir(mode=0o700)
        if uid != os.getuid():
            os.chown(path, uid, uid)
        return cls(path, mounted=False)

    def destroy(self) -> None:
        """Unmount (the loop device and image go with it) and remove the mount point."""
        for point in mounts_under(self.path):
            unmount(point)
        if mounts_under(self.path):
            log.error("%s is still mounted; leaving it", self.path)
            return
        remove_tree(self.path)
