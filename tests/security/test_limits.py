"""Resource limits hold: memory, processes, CPU, wall clock, output, /tmp and /mnt/data."""

import asyncio
import contextlib
import os

from executor.errors import FileTooLarge
from executor.languages import Language
from executor.local import LocalSandbox
from tests.executor.conftest import BackendFactory, chunks, run

MIB = 1024 * 1024


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def test_huge_allocation_is_a_memory_error(sandbox: LocalSandbox) -> None:
    await run(sandbox, "kept = 42")
    out = await run(sandbox, "import numpy as np\nx = np.ones(2**30)")  # 8 GiB
    assert out.error is not None and out.error.name == "MemoryError"
    assert not out.state_lost
    assert (await run(sandbox, "print(kept)")).stdout == "42\n"


async def test_memory_bomb_is_oom_killed_and_recovered(make_backend: BackendFactory) -> None:
    backend = await make_backend(memory_limit_mb=256, tmp_size_mb=32)
    sandbox = await backend.create()
    out = await run(sandbox, "chunks = []\nwhile True:\n    chunks.append(b'x' * (32 * 2**20))")
    assert out.state_lost
    assert out.error is not None and out.error.name == "MemoryError", out.error
    assert "256 MB" in out.error.value
    assert (await run(sandbox, "print('back')")).stdout == "back\n"


async def test_memory_bomb_in_a_one_shot(make_backend: BackendFactory) -> None:
    backend = await make_backend(memory_limit_mb=256, tmp_size_mb=32)
    sandbox = await backend.create()
    code = (
        "#include <stdlib.h>\n#include <string.h>\n"
        "int main(void) { for (;;) { char *p = malloc(16 << 20); if (!p) return 9;"
        " memset(p, 1, 16 << 20); } }"
    )
    out = await run(sandbox, code, Language.C, timeout=10)
    assert out.exit_code != 0
    assert out.error is not None and out.error.name == "MemoryError"
    assert (await run(sandbox, "print('ok')")).stdout == "ok\n"


async def test_fork_bomb_is_contained(make_backend: BackendFactory) -> None:
    backend = await make_backend(pids_limit=64)
    sandbox = await backend.create()
    out = await run(sandbox, ":(){ :|:& };:; sleep 10", Language.BASH, timeout=2)
    assert "Resource temporarily unavailable" in out.stderr
    assert out.timed_out and out.exit_code is None
    assert sandbox.cgroup is not None and len(sandbox.cgroup.pids()) <= 3
    assert (await run(sandbox, "print('alive')")).stdout == "alive\n"


async def test_fork_bomb_without_cgroups_is_contained_by_rlimits(
    make_backend: BackendFactory,
) -> None:
    backend = await make_backend(sandbox_cgroups=False, pids_limit=64)
    sandbox = await backend.create()
    assert sandbox.cgroup is None
    out = await run(sandbox, ":(){ :|:& };:; sleep 10", Language.BASH, timeout=2)
    assert "Resource temporarily unavailable" in out.stderr
    assert out.timed_out
    huge = await run(sandbox, "import numpy as np\nx = np.ones(2**30)")
    assert huge.error is not None and huge.error.name == "MemoryError"
    assert (await run(sandbox, "print('alive')")).stdout == "alive\n"


async def test_cpu_is_capped_by_the_quota(make_backend: BackendFactory) -> None:
    # A small quota, so that the cap binds even when other work on the host leaves the
    # loop less than a whole core.
    backend = await make_backend(cpu_quota=0.2)
    sandbox = await backend.create()
    code = (
        "import time\nt, c = time.time(), time.process_time()\n"
        "while time.time() - t < 1: pass\n"
        "print(round((time.process_time() - c) / (time.time() - t), 2))"
    )
    out = await run(sandbox, code)
    assert float(out.stdout) < 0.3, out.stdout
    assert sandbox.cgroup is not None
    stat = next(d / "cpu.stat" for d in sandbox.cgroup.dirs if (d / "cpu.stat").exists())
    throttled = dict(line.split() for line in stat.read_text().splitlines())["nr_throttled"]
    assert int(throttled) > 0


async def test_c_infinite_loop_is_killed_at_the_deadline(sandbox: LocalSandbox) -> None:
    out = await run(sandbox, "int main(void) { for (;;); }", Language.C, timeout=1)
    assert out.timed_out and out.exit_code is None
    assert out.error is not None and out.error.name == "TimeoutError"
    assert sandbox.cgroup is not None and len(sandbox.cgroup.pids()) <= 3
    assert (await run(sandbox, "echo ok", Language.BASH)).stdout == "ok\n"


async def test_uninterruptible_python_is_killed_and_restarted(sandbox: LocalSandbox) -> None:
    await run(sandbox, "x = 1")
    out = await run(sandbox, "sum(range(10**12))", timeout=0.5)  # a C loop: no signal checks
    assert out.timed_out and out.state_lost
    assert (await run(sandbox, "print('x' in globals())")).stdout == "False\n"


async def test_sigint_ignoring_loop_is_killed_and_restarted(sandbox: LocalSandbox) -> None:
    code = "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: pass"
    out = await run(sandbox, code, timeout=0.5)
    assert out.timed_out and out.state_lost
    assert (await run(sandbox, "print(2)")).stdout == "2\n"


async def test_output_flood_is_capped_and_stopped(sandbox: LocalSandbox) -> None:
    before = rss_mb()
    code = "import sys\nfor _ in range(200):\n    sys.stdout.write('x' * 2**20)"  # 200 MB
    out = await run(sandbox, code, timeout=30, max_output_bytes=64 * 1024)
    # Stopped by the output limit, not by the deadline.
    assert not out.timed_out
    assert out.stdout_truncated and len(out.stdout) == 64 * 1024
    assert set(out.stdout) == {"x"}
    assert out.error is not None and out.error.name == "OutputLimitExceeded"
    assert rss_mb() - before < 200
    assert (await run(sandbox, "print('quiet')")).stdout == "quiet\n"


UNDO_SOFT_CAP = """
import ipykernel.iostream as iostream
patched = iostream.OutStream.write
iostream.OutStream.write = next(
    c.cell_contents for c in patched.__closure__
    if getattr(c.cell_contents, "__qualname__", "") == "OutStream.write"
)
"""


async def test_flood_is_stopped_even_without_the_kernel_soft_cap(sandbox: LocalSandbox) -> None:
    undo = await run(sandbox, UNDO_SOFT_CAP)
    assert undo.error is None, undo.error
    before = rss_mb()
    out = await run(
        sandbox, "while True: print('z' * 1000)", timeout=30, max_output_bytes=64 * 1024
    )
    assert not out.timed_out  # stopped by the output limit, not by the deadline
    assert out.stdout_truncated and out.stdout.startswith("z" * 1000)
    assert out.error is not None and out.error.name == "OutputLimitExceeded"
    assert rss_mb() - before < 200
    assert (await run(sandbox, "print('quiet')")).stdout == "quiet\n"


async def test_fd_level_flood_is_capped_and_stopped(sandbox: LocalSandbox) -> None:
    out = await run(sandbox, "import os\nos.system('yes')", timeout=30, max_output_bytes=64 * 1024)
    assert out.stdout_truncated and out.stdout.startswith("y\ny\n")
    assert not out.timed_out
    shell = await run(sandbox, "yes | head -c 200000000", Language.BASH, max_output_bytes=64 * 1024)
    assert shell.stdout_truncated and shell.error is not None
    assert shell.error.name == "OutputLimitExceeded"
    assert (await run(sandbox, "print('quiet')")).stdout == "quiet\n"


async def test_filling_tmp_stops_at_its_size(sandbox: LocalSandbox) -> None:
    code = """
import errno
written = 0
try:
    with open('/tmp/fill', 'wb') as f:
        while True:
            f.write(b'x' * 2**20)
            written += 1
except OSError as e:
    print(errno.errorcode[e.errno], written)
"""
    out = await run(sandbox, code)
    name, mib = out.stdout.split()
    assert name == "ENOSPC" and int(mib) <= 64
    assert (await run(sandbox, "import os; os.remove('/tmp/fill'); print(1)")).stdout == "1\n"


async def test_filling_mnt_data_stops_at_its_size(sandbox: LocalSandbox) -> None:
    code = """
import errno
written = 0
try:
    with open('/mnt/data/fill', 'wb') as f:
        while True:
            f.write(b'x' * 2**20)
            f.flush()
            written += 1
except OSError as e:
    print(errno.errorcode[e.errno], written)
"""
    out = await run(sandbox, code)
    name, mib = out.stdout.split()
    assert name == "ENOSPC" and 16 <= int(mib) <= 32
    stat = os.statvfs(sandbox.data_path)
    assert stat.f_blocks * stat.f_frsize <= 32 * MIB
    try:
        await sandbox.write_file("more.bin", chunks(b"y" * MIB), max_bytes=64 * MIB)
        raise AssertionError("the host wrote past the volume's size")
    except FileTooLarge:
        pass
    listed = {f.path for f in await sandbox.list_files()}
    assert listed == {"/mnt/data/fill"}
    assert (await run(sandbox, "print(1)")).stdout == "1\n"


async def test_a_stuck_sandbox_does_not_block_another(backend: object) -> None:
    from executor.local import LocalBackend

    assert isinstance(backend, LocalBackend)
    busy, calm = await backend.create(), await backend.create()
    stuck = asyncio.create_task(run(busy, "while True: pass", timeout=60))
    out = await run(calm, "print(1)")
    # The other sandbox answered while this one was still stuck.
    assert out.stdout == "1\n" and not stuck.done()
    stuck.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await stuck
