"""A sandbox sees nothing of the host: files, paths, environment, other sandboxes, processes."""

import os
import platform
from pathlib import Path

import pytest

from executor.languages import Language
from executor.local import LocalBackend, LocalSandbox
from tests.executor.conftest import REPO, BackendFactory, chunks, run

SECRET = "hunter2-do-not-leak"

SCAN_PROC = """
import os
hits = []
for pid in os.listdir('/proc'):
    if pid.isdigit():
        for name in ('cmdline', 'environ'):
            try:
                data = open(f'/proc/{pid}/{name}', 'rb').read().decode(errors='replace')
            except OSError:
                continue
            hits += [(pid, name, needle) for needle in NEEDLES if needle in data]
print(hits)
"""

# x86_64 and aarch64 syscall numbers of calls the seccomp filter denies.
SYSCALLS = {
    "x86_64": {"ptrace": 101, "keyctl": 250, "bpf": 321, "perf_event_open": 298, "unshare": 272,
               "mount": 165, "io_uring_setup": 425, "setns": 308},
    "aarch64": {"ptrace": 117, "keyctl": 219, "bpf": 280, "perf_event_open": 241, "unshare": 97,
                "mount": 40, "io_uring_setup": 425, "setns": 268},
}  # fmt: skip


async def test_host_files_are_not_visible(sandbox: LocalSandbox, local_data_dir: Path) -> None:
    paths = ["/etc/shadow", "/root", "/home", "/var", "/sys", "/run/codeproxy", str(REPO)]
    paths += [str(local_data_dir), str(sandbox.data_path), str(sandbox.host_dir)]
    out = await run(sandbox, f"import os\nprint([p for p in {paths!r} if os.path.exists(p)])")
    assert out.stdout == "[]\n"
    top = await run(sandbox, "import os\nprint(sorted(os.listdir('/')))")
    expected = ["bin", "dev", "etc", "lib", "lib64", "mnt", "opt", "proc", "run", "sbin", "tmp"]
    assert top.stdout == f"{[*expected, 'usr']}\n"
    etc = await run(sandbox, "ls /etc", Language.BASH)
    assert etc.stdout.split() == ["alternatives", "fonts", "group", "ld.so.cache", "passwd"]


async def test_service_environment_does_not_leak(
    make_backend: BackendFactory, monkeypatch: pytest.MonkeyPatch, local_data_dir: Path
) -> None:
    monkeypatch.setenv("CODEPROXY_TEST_SECRET", SECRET)
    backend = await make_backend()
    sandbox = await backend.create()
    env = await run(sandbox, "import os\nprint(sorted(os.environ))")
    assert "CODEPROXY_TEST_SECRET" not in env.stdout and SECRET not in env.stdout
    needles = [SECRET, str(REPO), str(local_data_dir), "/run/codeproxy", str(sandbox.host_dir)]
    scan = await run(sandbox, f"NEEDLES = {needles!r}\n{SCAN_PROC}")
    assert scan.stdout == "[]\n"
    bash_env = await run(sandbox, "env; cat /proc/1/cmdline | tr '\\0' ' '", Language.BASH)
    assert SECRET not in bash_env.stdout and str(REPO) not in bash_env.stdout
    assert (await run(sandbox, "print(1)")).stdout == "1\n"


async def test_pid_1_cmdline_shows_no_host_path(sandbox: LocalSandbox) -> None:
    out = await run(sandbox, "print(open('/proc/1/cmdline').read().split('\\0'))")
    argv = eval(out.stdout)
    assert argv[0].endswith("bwrap") and argv[1] == "--args" and argv[2].isdigit()
    assert argv[3:5] == ["setsid", "python3"]  # the options themselves stay hidden
    assert not any(str(sandbox.host_dir) in a or str(REPO) in a for a in argv)


async def test_another_sandbox_is_invisible(backend: LocalBackend) -> None:
    first = await backend.create()
    second = await backend.create()
    await first.write_file("secret.txt", chunks(SECRET.encode()), max_bytes=100)
    await run(first, "import time\nkeep = open('/mnt/data/secret.txt').read()")
    peek = await run(
        second,
        "import os\n"
        f"print(os.listdir('/mnt/data'), os.path.exists({str(first.data_path)!r}))\n"
        "print(len([p for p in os.listdir('/proc') if p.isdigit()]))",
    )
    listing, pids = peek.stdout.splitlines()
    assert listing == "[] False"
    assert int(pids) <= 4  # its own reaper, kernel and whatever runs the check
    assert first.uid != second.uid
    assert (await run(first, "print(keep)")).stdout == SECRET + "\n"


async def test_runs_unprivileged_on_the_host(sandbox: LocalSandbox) -> None:
    assert sandbox.uid >= 1000
    assert sandbox.cgroup is not None
    for pid in sandbox.cgroup.pids():
        assert os.stat(f"/proc/{pid}").st_uid == sandbox.uid
    out = await run(
        sandbox,
        "import os\nstatus = open('/proc/self/status').read()\n"
        "print(os.getuid(), [l.split()[1] for l in status.splitlines() "
        "if l.split(':')[0] in ('CapEff', 'CapPrm', 'NoNewPrivs', 'Seccomp')])",
    )
    assert out.stdout == "1000 ['0000000000000000', '0000000000000000', '1', '2']\n"


async def test_dangerous_syscalls_are_denied(sandbox: LocalSandbox) -> None:
    numbers = SYSCALLS[platform.machine()]
    code = f"""
import ctypes, errno
libc = ctypes.CDLL(None, use_errno=True)
result = {{}}
for name, nr in {numbers!r}.items():
    ret = libc.syscall(nr, 16 if name == 'ptrace' else 0x10000000, 1, 0, 0, 0)
    result[name] = errno.errorcode.get(ctypes.get_errno(), ret) if ret == -1 else 'ALLOWED'
print(result)
"""
    out = await run(sandbox, code)
    assert "ALLOWED" not in out.stdout, out.stdout
    assert set(eval(out.stdout).values()) == {"EPERM"}
    nested = await run(sandbox, "unshare -U true; echo $?", Language.BASH)
    assert nested.stdout.strip() != "0"
    assert (await run(sandbox, "print(1)")).stdout == "1\n"


async def test_system_paths_are_read_only(sandbox: LocalSandbox) -> None:
    code = """
import errno
res = {}
for path in ['/x', '/etc/x', '/usr/x', '/opt/venv/x', '/dev/x', '/bin/x', '/proc/x']:
    try:
        open(path, 'w').close()
        res[path] = 'WRITTEN'
    except OSError as e:
        res[path] = errno.errorcode[e.errno]
print(res)
"""
    out = await run(sandbox, code)
    assert "WRITTEN" not in out.stdout, out.stdout
    writable = await run(
        sandbox, "open('/tmp/ok', 'w').write('1'); open('/dev/shm/ok', 'w').write('1')"
    )
    assert writable.error is None
