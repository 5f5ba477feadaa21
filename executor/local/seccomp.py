"""The sandbox's seccomp filter: generated once per architecture and cached in the data dir.

The BPF comes from `seccomp_filter.py`, run by the system interpreter that has Debian's
python3-seccomp binding. The cache key includes a hash of that script, so editing the denylist
regenerates the filter.
"""

import hashlib
import logging
import os
import platform
import subprocess
from pathlib import Path

log = logging.getLogger(__name__)

SCRIPT = Path(__file__).with_name("seccomp_filter.py")
SYSTEM_PYTHON = "/usr/bin/python3"


class SeccompUnavailable(Exception):
    """The filter could not be generated (python3-seccomp missing, most likely)."""


def ensure_filter(cache_dir: Path, python: str = SYSTEM_PYTHON) -> Path:
    """Path of the cached BPF for this machine, generating it first if needed."""
    digest = hashlib.sha256(SCRIPT.read_bytes()).hexdigest()[:12]
    target = cache_dir / f"seccomp-{platform.machine()}-{digest}.bpf"
    if target.is_file() and target.stat().st_size > 0:
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    done = subprocess.run(
        [python, "-I", str(SCRIPT), str(tmp)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        raise SeccompUnavailable(
            f"generating the seccomp filter with {python} failed: {done.stderr.strip()[-500:]}. "
            "Install it with: apt-get install -y python3-seccomp"
        )
    os.replace(tmp, target)
    log.info("generated seccomp filter %s", target)
    return target
