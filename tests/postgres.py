"""A throwaway PostgreSQL cluster for the test session: Debian's server binaries, a data dir
and a unix socket in a temporary folder, no TCP port.

PostgreSQL refuses to run as root, so as root (CI) the server runs as the `postgres` system
user (or `nobody`). Durability is switched off: the cluster dies with the session.
"""

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from itertools import count
from pathlib import Path

SUPERUSER = "codeproxy"
STARTUP_TIMEOUT = 60.0


def server_binaries() -> Path:
    """The newest installed server's bin dir; `make test` installs it when missing."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/postgres"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if not found:
        raise RuntimeError(
            "PostgreSQL is not installed: `make test` installs it (apt-get install postgresql)"
        )
    return Path(found[-1]).parent


class Cluster:
    """A running cluster; `create_database()` gives each test its own database."""

    def __init__(self, root: Path, bindir: Path, process: subprocess.Popen[bytes]) -> None:
        self.root = root
        self.socket_dir = root / "socket"
        self.bindir = bindir
        self.process = process
        self._names = count(1)

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://{SUPERUSER}@/{database}?host={self.socket_dir}"

    def create_database(self) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        name = f"test_{os.getpid()}_{next(self._names)}"
        subprocess.run(
            [self.bindir / "createdb", "-h", str(self.socket_dir), "-U", SUPERUSER, name],
            check=True,
            capture_output=True,
        )
        return self.url(name)


def _run_as() -> dict[str, object]:
    if os.geteuid() != 0:
        return {}
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    raise RuntimeError("no unprivileged user to run PostgreSQL as")


@contextlib.contextmanager
def running_cluster() -> Iterator[Cluster]:
    bindir = server_binaries()
    root = Path(tempfile.mkdtemp(prefix="codeproxy-pg-"))
    as_user = _run_as()
    data, sockets, log = root / "data", root / "socket", root / "server.log"
    sockets.mkdir()
    if as_user:
        for path in (root, sockets):
            os.chown(path, as_user["user"], as_user["group"])  # type: ignore[arg-type]
    process: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run(
            [
                bindir / "initdb",
                "-D",
                str(data),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ],
            check=True,
            capture_output=True,
            **as_user,  # type: ignore[arg-type]
        )
        with log.open("wb") as out:
            process = subprocess.Popen(
                [
                    bindir / "postgres",
                    "-D",
                    str(data),
                    "-k",
                    str(sockets),
                    "-c",
                    "listen_addresses=",
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "max_connections=300",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                **as_user,  # type: ignore[arg-type]
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while (
            subprocess.run(
                [bindir / "pg_isready", "-q", "-h", str(sockets), "-U", SUPERUSER]
            ).returncode
            != 0
        ):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not start:\n{log.read_text()}")
            time.sleep(0.05)
        yield Cluster(root, bindir, process)
    finally:
        if process is not None:
            process.send_signal(signal.SIGINT)  # "fast" shutdown: disconnects any client
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(root, ignore_errors=True)
