"""Fixtures for tests of the real local sandbox backend (bubblewrap; no mocks).

Every backend a test starts is closed afterwards and checked for leftovers on the host: no
process of a sandbox uid, no cgroup, no mount, no loop device and no runtime directory.
"""

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from executor.languages import Language
from executor.local import LocalBackend, LocalSandbox
from executor.models import RunOutcome
from executor.settings import ExecutorSettings

REPO = Path(__file__).resolve().parents[2]
# Away from the default (200000), and different for each test session, so a service or a test
# run in parallel on this host leases other uids and the leftover check never sees them.
UID_BASE = 400_000 + (os.getpid() % 4096) * 100
CGROUP_ROOT = Path("/sys/fs/cgroup")

BackendFactory = Callable[..., Awaitable[LocalBackend]]


@pytest.fixture(scope="session")
def local_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data dir for the session, so the seccomp filter is generated only once."""
    return tmp_path_factory.mktemp("local-data")


@pytest.fixture
def local_settings(local_data_dir: Path) -> Callable[..., ExecutorSettings]:
    """Small limits, so the abuse tests are quick; overrides per test."""

    def make(**overrides: Any) -> ExecutorSettings:
        values: dict[str, Any] = {
            "data_dir": local_data_dir,
            "sandbox_venv": REPO / ".sandbox-venv",
            "sandbox_uid_base": UID_BASE,
            "memory_limit_mb": 512,
            "pids_limit": 128,
            "cpu_quota": 1.0,
            "tmp_size_mb": 64,
            "data_size_mb": 32,
            "interrupt_grace": 1.0,
        }
        values.update(overrides)
        return ExecutorSettings(_env_file=None, **values)  # type: ignore[call-arg]

    return make


def leftovers(instance: str, root: Path) -> list[str]:
    """What a closed backend instance left on this host (empty when clean)."""
    found = []
    if (root / instance).exists():
        found.append(f"directory {root / instance}")
    for ctrl in ("memory", "pids", "cpu", ""):
        found += [f"cgroup {p}" for p in (CGROUP_ROOT / ctrl / "codeproxy").glob(f"*-{instance}-*")]
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split(" ")[4]
        if point.startswith(str(root / instance)):
            found.append(f"mount {point}")
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            if instance in backing.read_text():
                found.append(f"loop device {backing.parent.parent.name}")
        except OSError:
            continue
    found += [f"process {describe(pid)}" for pid in sandbox_processes()]
    return found


def describe(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return f"{pid} (gone)"
    return f"{pid} {stat.rpartition(')')[2].split()[:2]} {cmd[:80]!r}"


def sandbox_processes() -> list[int]:
    """Live pids owned by the test range of sandbox uids.

    Zombies do not count: the sandbox's inner bwrap is reparented to the host's init when it
    dies, and reaping it is init's job (on this VM init reaps them only now and then).
    """
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                uid = entry.stat().st_uid
                state = Path(entry.path, "stat").read_text().rpartition(")")[2].split()[0]
            except (OSError, IndexError):
                continue
            if UID_BASE <= uid < UID_BASE + 100 and state != "Z":
                pids.append(int(entry.name))
    return pids


@pytest.fixture
async def make_backend(
    local_settings: Callable[..., ExecutorSettings],
) -> AsyncIterator[BackendFactory]:
    """Start a LocalBackend with settings overrides; closed and checked after the test."""
    started: list[tuple[LocalBackend, str, Path]] = []

    async def make(**overrides: Any) -> LocalBackend:
        backend = LocalBackend(local_settings(**overrides))
        await backend.start()
        runtime = backend.host.runtime
        started.append((backend, runtime.instance, runtime.root))
        return backend

    yield make
    for backend, _, _ in started:
        await backend.aclose()
    for _, instance, root in started:
        assert leftovers(instance, root) == []


@pytest.fixture
async def backend(make_backend: BackendFactory) -> LocalBackend:
    return await make_backend()


@pytest.fixture
async def sandbox(backend: LocalBackend) -> LocalSandbox:
    return await backend.create()


async def run(
    sandbox: LocalSandbox,
    code: str,
    language: Language = Language.PYTHON,
    *,
    timeout: float = 20.0,
    max_output_bytes: int = 64 * 1024,
) -> RunOutcome:
    return await sandbox.run(code, language, timeout=timeout, max_output_bytes=max_output_bytes)


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def read_all(sandbox: LocalSandbox, path: str) -> bytes:
    return b"".join([chunk async for chunk in await sandbox.read_file(path)])
