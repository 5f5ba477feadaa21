"""The read-only Python environment mounted at /opt/venv in every sandbox."""

import contextlib
import logging
import os
import re
import subprocess
from pathlib import Path

from executor.errors import SandboxUnavailable
from executor.local.uids import accessible_by

log = logging.getLogger(__name__)

BUILD_HINT = "Build it with `make` (target .sandbox-venv), or point CODEPROXY_SANDBOX_VENV at one."


def _config(venv: Path) -> dict[str, str]:
    values = {}
    for line in (venv / "pyvenv.cfg").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip()
    return values


def check_venv(path: Path) -> Path:
    """The venv's absolute path, after checking it can work inside a sandbox."""
    venv = path.absolute()
    if not (venv / "pyvenv.cfg").is_file() or not (venv / "bin" / "python3").exists():
        raise SandboxUnavailable(
            f"The sandbox Python environment {venv} does not exist. {BUILD_HINT}"
        )
    home = _config(venv).get("home", "")
    # Only /usr is visible in the sandbox, so the venv's base interpreter must live there.
    if not home.startswith("/usr/"):
        raise SandboxUnavailable(
            f"The sandbox environment {venv} was built from {home or 'an unknown Python'}, "
            "which is not visible inside the sandbox. Rebuild it from /usr/bin/python3. "
            + BUILD_HINT
        )
    if not list(venv.glob("lib/python3*/site-packages/ipykernel")):
        raise SandboxUnavailable(f"ipykernel is not installed in {venv}. {BUILD_HINT}")
    return venv


def python_flags(venv: Path) -> tuple[str, ...]:
    """-P (no cwd on sys.path at start-up) exists from Python 3.11 on."""
    match = re.match(r"(\d+)\.(\d+)", _config(venv).get("version", ""))
    if match and (int(match[1]), int(match[2])) >= (3, 11):
        return ("-P",)
    return ()


def matplotlib_version(venv: Path) -> str | None:
    """The installed matplotlib version (keys the font cache), or None."""
    for info in venv.glob("lib/python3*/site-packages/matplotlib-*.dist-info"):
        return info.name.removesuffix(".dist-info").removeprefix("matplotlib-")
    return None


def readable_by(venv: Path, uid: int) -> bool:
    """Whether `uid` (with no groups) can reach the venv, i.e. every parent is traversable."""
    return accessible_by(venv / "pyvenv.cfg", uid, "-r")


def mount_readonly(venv: Path, target: Path) -> None:
    """Mount `venv` read-only at `target` (root only) so that no host path shows inside.

    A bind mount shows its source's host path in the sandbox's /proc/self/mountinfo (a bind's
    root is its path on the host filesystem). An overlay is a filesystem of its own, and its
    lower layers are named here as /proc/self/fd/N of the mount command, which is all
    mountinfo shows of them. Without an upper layer overlay wants two lower ones: the second
    is an empty directory. Being root's mount, it also reaches a venv below a private
    directory (say /root, mode 0700) without opening that up.
    """
    target.mkdir(mode=0o755)
    empty = target.parent / f".{target.name}-empty"
    empty.mkdir(mode=0o755)
    fds = [os.open(p, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) for p in (venv, empty)]
    try:
        lower = ":".join(f"/proc/self/fd/{fd}" for fd in fds)
        done = subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", f"ro,nosuid,nodev,lowerdir={lower}",
             str(target)],
            capture_output=True, text=True, check=False, pass_fds=fds,
        )  # fmt: skip
    finally:
        for fd in fds:
            os.close(fd)
    if done.returncode != 0:
        target.rmdir()
        empty.rmdir()
        raise SandboxUnavailable(f"Could not expose {venv} to the sandbox: {done.stderr.strip()}")


def unmount_readonly(target: Path) -> None:
    """Undo mount_readonly."""
    subprocess.run(["umount", str(target)], capture_output=True, check=False)
    for d in (target, target.parent / f".{target.name}-empty"):
        with contextlib.suppress(OSError):
            d.rmdir()
