"""The read-only Python environment mounted at /opt/venv in every sandbox."""

import logging
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


def bind_readonly(venv: Path, target: Path) -> None:
    """Expose the venv read-only at `target` (a path sandbox uids can traverse)."""
    target.mkdir(mode=0o755)
    for cmd in (
        ["mount", "--bind", str(venv), str(target)],
        ["mount", "-o", "remount,bind,ro,nosuid,nodev", str(target)],
    ):
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            subprocess.run(["umount", str(target)], capture_output=True, check=False)
            target.rmdir()
            raise SandboxUnavailable(
                f"Could not expose {venv} to the sandbox: {done.stderr.strip()}"
            )
