"""What a sandbox can consume outside its cgroup and size caps: service memory through its
kernel's sockets, host disk through writable paths, and teardown through deep trees."""

import asyncio
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from executor.local import LocalBackend, LocalSandbox
from executor.local.cgroups import CgroupTree
from executor.local.runtime import RuntimeRoot
from tests.executor.conftest import REPO, BackendFactory, run

MIB = 1024 * 1024


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def peak_rss_growth(seconds: float, before: float) -> float:
    """The largest RSS growth of this process over `seconds` (sampled)."""
    peak = before
    for _ in range(int(seconds / 0.1)):
        await asyncio.sleep(0.1)
        peak = max(peak, rss_mb())
    return peak - before


# A thread in the kernel sends its own messages on iopub, bypassing every output cap of a cell:
# before the service drained and capped its kernel sockets, ZeroMQ buffered all of them (up to
# 1000 messages of any size) in the service's own memory.
SOCKET_FLOOD = """
import threading, time
k = get_ipython().kernel
def flood():
    time.sleep({delay})
    for _ in range({count}):
        k.session.send(k.iopub_socket, 'stream', {{'name': 'stdout', 'text': 'x' * {size}}},
                       parent={{}})
threading.Thread(target=flood, daemon=True).start()
"""


@pytest.mark.parametrize("size_mb,count", [(16, 16), (1, 256)], ids=["huge", "many"])
async def test_kernel_socket_flood_between_cells_stays_out_of_service_memory(
    make_backend: BackendFactory, size_mb: int, count: int
) -> None:
    backend = await make_backend(max_output_bytes=64 * 1024)
    sandbox = await backend.create()
    await run(sandbox, "kept = 42")
    before = rss_mb()
    code = SOCKET_FLOOD.format(delay=0.2, count=count, size=size_mb * MIB)
    assert (await run(sandbox, code)).error is None
    growth = await peak_rss_growth(4.0, before)
    assert growth < 64, f"the service grew by {growth:.0f} MB"
    # The flooding kernel was killed; the session goes on, reporting the lost state.
    after = await run(sandbox, "print('kept' in globals())")
    assert after.state_lost and after.stdout == "False\n"
    assert (await run(sandbox, "print('calm')")).stdout == "calm\n"


async def test_kernel_socket_flood_during_a_cell_is_stopped(make_backend: BackendFactory) -> None:
    backend = await make_backend(max_output_bytes=64 * 1024)
    sandbox = await backend.create()
    before = rss_mb()
    code = SOCKET_FLOOD.format(delay=0, count=256, size=MIB) + "time.sleep(30)"
    out = await run(sandbox, code, timeout=60)
    assert out.error is not None and out.error.name == "OutputLimitExceeded", out.error
    assert not out.timed_out
    assert rss_mb() - before < 64
    assert (await run(sandbox, "print('calm')")).stdout == "calm\n"


# Writable paths: every one must be a size-capped filesystem.

WRITABLE_MOUNTS = """
mounts = []
for line in open('/proc/self/mountinfo'):
    fields = line.split()
    point, options = fields[4], fields[5].split(',')
    fstype, source, super_options = fields[-3], fields[-2], fields[-1].split(',')
    if 'rw' in options and fstype not in ('proc', 'devpts', 'devtmpfs'):
        sized = any(o.startswith('size=') for o in super_options)
        mounts.append((point, fstype, source.startswith('/dev/loop') or sized))
print(sorted(mounts))
"""


async def test_every_writable_path_is_size_capped(sandbox: LocalSandbox) -> None:
    out = await run(sandbox, WRITABLE_MOUNTS)
    mounts = eval(out.stdout)
    assert {point for point, _, _ in mounts} == {"/tmp", "/dev/shm", "/mnt/data", "/run/kernel"}
    assert all(capped for _, _, capped in mounts), mounts


FILL = """
import errno
written = 0
try:
    with open('{path}', 'wb') as f:
        while written < {limit}:
            f.write(b'x' * 2**20)
            f.flush()
            written += 1
except OSError as e:
    print(errno.errorcode[e.errno], written)
else:
    print('NO LIMIT', written)
"""


async def test_filling_the_kernel_run_dir_stops_at_the_volume_size(sandbox: LocalSandbox) -> None:
    host_free = shutil.disk_usage(sandbox.host_dir).free
    out = await run(sandbox, FILL.format(path="/run/kernel/fill", limit=128), timeout=60)
    assert out.error is None, out
    name, mib = out.stdout.split()
    assert name == "ENOSPC" and int(mib) <= 32, out.stdout
    # The host's disk lost at most the volume's size (32 MiB here; the margin is for other
    # writers on this machine), not the 128 MiB the code tried to write.
    assert host_free - shutil.disk_usage(sandbox.host_dir).free < 96 * MIB
    cleaned = await run(sandbox, "import os; os.remove('/run/kernel/fill'); print(1)")
    assert cleaned.stdout == "1\n"


# Deep trees: removal and listing must not recurse.

DEEP_TREE = """
import os
for top in {tops!r}:
    fd = os.open(top, os.O_RDONLY)
    for _ in range({depth}):
        os.mkdir('d', dir_fd=fd)
        child = os.open('d', os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = child
    open(os.open('leaf', os.O_WRONLY | os.O_CREAT, dir_fd=fd), 'w').write('deep')
    os.close(fd)
print('built')
"""


def uid_leased(backend: LocalBackend, uid: int) -> bool:
    return (backend.host.runtime.uid_locks / f"{uid}.lock").exists()


async def test_deep_trees_do_not_defeat_teardown(backend: LocalBackend) -> None:
    sandbox = await backend.create()
    out = await run(sandbox, DEEP_TREE.format(tops=["/run/kernel", "/mnt/data"], depth=1100))
    assert out.stdout == "built\n", out
    uid = sandbox.uid
    assert uid_leased(backend, uid)
    await sandbox.close()
    assert not sandbox.host_dir.exists()
    assert not uid_leased(backend, uid)
    # The backend still works, and leaves nothing behind (the fixture checks).
    again = await backend.create()
    assert (await run(again, "print('fresh')")).stdout == "fresh\n"


async def test_a_deep_tree_in_mnt_data_keeps_the_session_usable(sandbox: LocalSandbox) -> None:
    await run(sandbox, "open('/mnt/data/top.txt', 'w').write('top')")
    out = await run(sandbox, DEEP_TREE.format(tops=["/mnt/data"], depth=3000), timeout=60)
    assert out.stdout == "built\n", out
    listed = [f.path for f in await sandbox.list_files()]
    assert "/mnt/data/top.txt" in listed
    assert not any(p.endswith("/leaf") for p in listed)  # too deep to be listed
    assert (await run(sandbox, "print('still here')")).stdout == "still here\n"


@pytest.fixture
def own_runtime_root() -> Iterator[Path]:
    """A runtime root of this test's own (short: socket paths are limited).

    Request it before `make_backend`, so that it is removed after the backends are closed.
    """
    root = Path(tempfile.mkdtemp(prefix="cp-", dir="/tmp"))
    yield root
    # Whatever depth a test left there.
    subprocess.run(["rm", "-rf", "--one-file-system", str(root)], check=True)


def deep_dir(parent: Path, depth: int) -> None:
    """A tree `depth` levels deep, built without paths (they would pass PATH_MAX)."""
    fd = os.open(parent, os.O_RDONLY)
    for _ in range(depth):
        os.mkdir("d", dir_fd=fd)
        child = os.open("d", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = child
    os.close(fd)


async def test_start_up_sweep_survives_a_deep_tree(
    own_runtime_root: Path, make_backend: BackendFactory
) -> None:
    # What a crashed instance leaves: its directory, with a deep tree a sandbox made, and no
    # lock holder.
    dead = own_runtime_root / "0badcafe"
    (dead / "5ca1ab1e0000").mkdir(parents=True)
    deep_dir(dead / "5ca1ab1e0000", 1100)
    backend = await make_backend(sandbox_runtime_dir=own_runtime_root)
    assert not dead.exists()
    sandbox = await backend.create()
    assert (await run(sandbox, "print('swept')")).stdout == "swept\n"


async def test_the_sweep_leaves_other_instances_alone(
    own_runtime_root: Path, make_backend: BackendFactory
) -> None:
    first = await make_backend()
    sandbox = await first.create()
    await run(sandbox, "x = 'alive'")
    # Another instance, with a runtime dir of its own, on the same cgroup tree and data dir.
    second = await make_backend(sandbox_runtime_dir=own_runtime_root)
    other = await second.create()
    out = await run(sandbox, "print(x)")
    assert (out.stdout, out.state_lost) == ("alive\n", False)
    assert (await run(other, "print(1)")).stdout == "1\n"
    await second.aclose()
    assert (await run(sandbox, "print(x)")).stdout == "alive\n"


async def test_the_sweep_only_touches_cgroups_of_its_own_runtime_dir(
    tmp_path: Path, own_runtime_root: Path
) -> None:
    # The cgroup tree on plain directories: what the sweep decides, without real cgroups.
    tree = CgroupTree([tmp_path / c / "codeproxy" for c in ("memory", "pids", "cpu")], v2=False)
    for parent in tree.parents:
        parent.mkdir(parents=True)
    live = RuntimeRoot(own_runtime_root / "a", tmp_path / "images")
    other = RuntimeRoot(own_runtime_root / "b", tmp_path / "images")
    live.open()
    other.open()
    try:
        name = live.cgroup_name("0123456789ab")
        for parent in tree.parents:
            (parent / name).mkdir()
        assert await other.sweep(tree) == 0
        assert name in tree.names()
    finally:
        live.close()
        other.close()


# What a sandbox can learn about the host from its mounts.


async def test_mountinfo_shows_no_host_path(sandbox: LocalSandbox, local_data_dir: Path) -> None:
    out = await run(sandbox, "print(open('/proc/self/mountinfo').read())")
    for path in (REPO, sandbox.host_dir, local_data_dir, sandbox.host_dir.parent):
        assert str(path) not in out.stdout, path
    assert "/run/codeproxy" not in out.stdout
