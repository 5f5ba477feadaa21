"""The local bubblewrap backend, for real: kernel state, outputs, languages, files, timeouts."""

import asyncio
import base64
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from executor.errors import FileTooLarge, InvalidRequest, SandboxFileNotFound, SandboxUnavailable
from executor.languages import Language
from executor.local import LocalBackend, LocalSandbox
from executor.settings import ExecutorSettings
from tests.executor.conftest import (
    REPO,
    UID_BASE,
    BackendFactory,
    chunks,
    leftovers,
    read_all,
    run,
    sandbox_processes,
)

MOUNTINFO = Path("/proc/self/mountinfo")


async def test_python_state_is_kept_across_runs(sandbox: LocalSandbox) -> None:
    first = await run(sandbox, "x = 41")
    second = await run(sandbox, "x += 1\nprint(x)")
    assert first.error is None and not first.state_lost
    assert second.stdout == "42\n"
    assert second.exit_code is None and second.duration_ms >= 0


async def test_stdout_and_stderr_are_separate(sandbox: LocalSandbox) -> None:
    out = await run(sandbox, "import sys\nprint('out')\nprint('err', file=sys.stderr)")
    assert out.stdout == "out\n"
    assert out.stderr == "err\n"
    assert not out.stdout_truncated and not out.stderr_truncated


async def test_subprocess_output_reaches_the_user(sandbox: LocalSandbox) -> None:
    out = await run(sandbox, "import os\nos.system('echo from-a-child')")
    assert "from-a-child" in out.stdout


async def test_error_has_name_value_and_plain_traceback(sandbox: LocalSandbox) -> None:
    out = await run(sandbox, "def f():\n    return 1 / 0\nf()")
    assert out.error is not None
    assert out.error.name == "ZeroDivisionError"
    assert out.error.value == "division by zero"
    text = "\n".join(out.error.traceback)
    assert "return 1 / 0" in text
    assert "\x1b[" not in text  # no ANSI colours for a model to wade through


async def test_plt_show_returns_a_png(sandbox: LocalSandbox) -> None:
    code = "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()"
    out = await run(sandbox, code)
    assert out.error is None, out.error
    assert out.stderr == ""  # no font-cache or fontconfig noise
    pngs = [r for r in out.results if "image/png" in r.data]
    assert len(pngs) == 1 and pngs[0].kind == "display_data"
    assert base64.b64decode(pngs[0].data["image/png"]).startswith(b"\x89PNG\r\n\x1a\n")


async def test_dataframe_result_has_html(sandbox: LocalSandbox) -> None:
    out = await run(sandbox, "import pandas as pd\npd.DataFrame({'a': [1, 2]})")
    assert out.error is None
    assert [r.kind for r in out.results] == ["execute_result"]
    assert "<table" in out.results[0].data["text/html"]
    assert "text/plain" in out.results[0].data


async def test_clear_output_keeps_only_what_follows(sandbox: LocalSandbox) -> None:
    code = "from IPython.display import clear_output\nprint('old')\nclear_output()\nprint('new')"
    out = await run(sandbox, code)
    assert out.stdout == "new\n"


async def test_user_modules_in_mnt_data_are_importable(sandbox: LocalSandbox) -> None:
    await sandbox.write_file("helper.py", chunks(b"VALUE = 7\n"), max_bytes=1024)
    out = await run(sandbox, "import helper\nprint(helper.VALUE)")
    assert out.stdout == "7\n"


async def test_a_file_shadowing_the_stdlib_does_not_break_a_restart(sandbox: LocalSandbox) -> None:
    # -P keeps /mnt/data off sys.path while the kernel starts.
    await sandbox.write_file("queue.py", chunks(b"raise SystemExit('shadowed')\n"), max_bytes=1024)
    await run(sandbox, "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
    out = await run(sandbox, "import queue\nprint(queue.Queue)")
    assert "queue.Queue" in out.stdout


async def test_one_shot_languages_share_mnt_data(sandbox: LocalSandbox) -> None:
    wrote = await run(sandbox, "open('/mnt/data/note.txt', 'w').write('from python')")
    assert wrote.error is None
    bash = await run(
        sandbox, "cat /mnt/data/note.txt; echo; echo bash >> /mnt/data/log", Language.BASH
    )
    assert bash.stdout == "from python\n" and bash.exit_code == 0
    js = await run(
        sandbox,
        "const fs = require('fs');\n"
        "console.log(fs.readFileSync('/mnt/data/note.txt', 'utf8'));\n"
        "fs.appendFileSync('/mnt/data/log', 'js\\n');",
        Language.JAVASCRIPT,
    )
    assert js.stdout == "from python\n" and js.exit_code == 0
    c = await run(
        sandbox,
        "#include <stdio.h>\n#include <math.h>\nint main(void) {\n"
        '  FILE *f = fopen("/mnt/data/log", "a"); fputs("c\\n", f); fclose(f);\n'
        '  printf("%.1f\\n", sqrt(2.25)); return 0;\n}\n',
        Language.C,
    )
    assert c.stdout == "1.5\n" and c.exit_code == 0 and c.error is None, c.stderr
    cpp = await run(
        sandbox,
        "#include <iostream>\n#include <fstream>\n#include <vector>\nint main() {\n"
        '  std::ofstream("/mnt/data/log", std::ios::app) << "cpp\\n";\n'
        "  std::vector<int> v{1, 2, 3}; std::cout << v.size() << std::endl; return 0;\n}\n",
        Language.CPP,
    )
    assert cpp.stdout == "3\n" and cpp.exit_code == 0, cpp.stderr
    log = await run(sandbox, "print(open('/mnt/data/log').read(), end='')")
    assert log.stdout == "bash\njs\nc\ncpp\n"


async def test_one_shot_exit_code_and_stderr(sandbox: LocalSandbox) -> None:
    out = await run(sandbox, "echo oops >&2; exit 3", Language.BASH)
    assert out.exit_code == 3
    assert out.stderr == "oops\n"
    assert out.error is None


async def test_compile_error_is_reported(sandbox: LocalSandbox) -> None:
    out = await run(sandbox, "int main(void) { return undefined_name; }", Language.C)
    assert out.exit_code not in (None, 0)
    assert "undefined_name" in out.stderr and "error" in out.stderr
    assert out.error is not None and out.error.name == "CompileError"
    assert "undefined_name" in out.error.value


async def test_failing_program_is_not_a_compile_error(sandbox: LocalSandbox) -> None:
    out = await run(sandbox, "int main(void) { return 5; }", Language.C)
    assert out.exit_code == 5 and out.error is None


async def test_files_write_read_list(sandbox: LocalSandbox) -> None:
    entry = await sandbox.write_file(
        "/mnt/data/in/data.csv", chunks(b"a,b\n", b"1,2\n"), max_bytes=1024
    )
    assert entry.path == "/mnt/data/in/data.csv" and entry.size == 8
    assert await read_all(sandbox, "in/data.csv") == b"a,b\n1,2\n"
    out = await run(
        sandbox,
        "import pandas as pd\ndf = pd.read_csv('in/data.csv')\ndf['c'] = df.a + df.b\n"
        "df.to_csv('/mnt/data/out.csv', index=False)\n"
        "open('in/data.csv', 'a').write('3,4\\n')",  # written files stay writable for the sandbox
    )
    assert out.error is None, out.error
    assert await read_all(sandbox, "/mnt/data/out.csv") == b"a,b,c\n1,2,3\n"
    listed = {f.path: f.size for f in await sandbox.list_files()}
    assert listed == {"/mnt/data/in/data.csv": 12, "/mnt/data/out.csv": 12}


async def test_write_replaces_and_keeps_the_sandbox_owner(sandbox: LocalSandbox) -> None:
    await sandbox.write_file("f.txt", chunks(b"one"), max_bytes=10)
    await sandbox.write_file("f.txt", chunks(b"two"), max_bytes=10)
    assert await read_all(sandbox, "f.txt") == b"two"
    st = os.stat(sandbox.data_path / "f.txt")
    assert st.st_uid == sandbox.uid


async def test_too_large_write_leaves_nothing(sandbox: LocalSandbox) -> None:
    with pytest.raises(FileTooLarge):
        await sandbox.write_file("new/dir/big.bin", chunks(b"x" * 600, b"x" * 600), max_bytes=1000)
    assert await sandbox.list_files() == []
    assert os.listdir(sandbox.data_path) == []


async def test_write_beyond_the_volume_is_too_large(sandbox: LocalSandbox) -> None:
    big = b"\0" * (1 << 20)
    with pytest.raises(FileTooLarge):
        await sandbox.write_file("fill.bin", chunks(*[big] * 40), max_bytes=1 << 30)
    assert os.listdir(sandbox.data_path) == []


async def test_bad_paths_are_refused(sandbox: LocalSandbox) -> None:
    for path in ("../etc/passwd", "/etc/passwd", "a/../../b", "", "x" * 300, "d/" + "y" * 300):
        with pytest.raises(InvalidRequest):
            await sandbox.write_file(path, chunks(b"x"), max_bytes=10)
    with pytest.raises(SandboxFileNotFound):
        await sandbox.read_file("missing.txt")
    await run(sandbox, "import os; os.mkdir('adir')")
    with pytest.raises(SandboxFileNotFound):
        await sandbox.read_file("adir")


async def test_timeout_interrupts_and_keeps_state(sandbox: LocalSandbox) -> None:
    await run(sandbox, "x = 5")
    out = await run(sandbox, "while True: pass", timeout=0.5)
    assert out.timed_out and not out.state_lost
    assert out.error is not None and out.error.name == "TimeoutError"
    after = await run(sandbox, "print(x)")
    assert after.stdout == "5\n" and not after.state_lost


async def test_timeout_of_sigint_ignoring_code_restarts(sandbox: LocalSandbox) -> None:
    await run(sandbox, "x = 5")
    code = "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: pass"
    out = await run(sandbox, code, timeout=0.5)
    assert out.timed_out and out.state_lost
    assert out.error is not None and "restarted" in out.error.value
    after = await run(sandbox, "print('x' in globals())")
    assert after.stdout == "False\n"
    assert sandbox.alive


async def test_interrupt_stops_the_running_cell(sandbox: LocalSandbox) -> None:
    await run(sandbox, "x = 3")
    task = asyncio.create_task(run(sandbox, "while True: pass"))
    await asyncio.sleep(0.5)
    await sandbox.interrupt()
    out = await task
    assert out.error is not None and out.error.name == "KeyboardInterrupt"
    assert not out.timed_out and not out.state_lost
    assert (await run(sandbox, "print(x)")).stdout == "3\n"


async def test_kernel_killed_while_idle_is_restarted_on_the_next_run(sandbox: LocalSandbox) -> None:
    await run(sandbox, "x = 3")
    kernel = [p for p in sandbox.kernel_pids() if _cmdline(p).startswith(b"python3")]
    assert len(kernel) == 1
    os.kill(kernel[0], signal.SIGKILL)
    await asyncio.sleep(0.2)
    out = await run(sandbox, "print('x' in globals())")
    assert out.stdout == "False\n" and out.state_lost
    assert (await run(sandbox, "print(1)")).stdout == "1\n"


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


async def test_cancelling_a_run_interrupts_it(sandbox: LocalSandbox) -> None:
    await run(sandbox, "x = 5")
    task = asyncio.create_task(run(sandbox, "import time\nwhile True: time.sleep(0.01)"))
    await asyncio.sleep(0.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    after = await run(sandbox, "print(x)")
    assert after.stdout == "5\n" and not after.state_lost


async def test_cancelling_an_uninterruptible_run_restarts(sandbox: LocalSandbox) -> None:
    code = "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: pass"
    task = asyncio.create_task(run(sandbox, code))
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    after = await run(sandbox, "print('ok')")
    assert after.stdout == "ok\n"


async def test_cancelling_a_one_shot_kills_it(sandbox: LocalSandbox) -> None:
    task = asyncio.create_task(run(sandbox, "sleep 100", Language.BASH))
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sandbox.cgroup is not None
    assert len(sandbox.cgroup.pids()) <= 3  # the kernel's bwrap, reaper and kernel only


async def test_output_is_capped_with_the_head_kept(sandbox: LocalSandbox) -> None:
    out = await run(sandbox, "for i in range(20000): print(f'line {i}')", max_output_bytes=4096)
    assert out.stdout_truncated and not out.stderr_truncated
    assert out.stdout.startswith("line 0\nline 1\n")
    assert len(out.stdout.encode()) <= 4096
    assert out.error is None or out.error.name == "OutputLimitExceeded"
    assert (await run(sandbox, "print(1)")).stdout == "1\n"


async def test_kernel_death_is_reported_and_recovered(sandbox: LocalSandbox) -> None:
    await run(sandbox, "x = 1")
    out = await run(sandbox, "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
    assert out.state_lost
    assert out.error is not None and out.error.name == "SandboxRestarted"
    assert (await run(sandbox, "print('x' in globals())")).stdout == "False\n"


async def test_event_loop_keeps_running_during_runs(sandbox: LocalSandbox) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0)
            ticks += 1

    tick = asyncio.create_task(ticker())
    try:
        for code, language in (
            ("for i in range(3000): print('y' * 1000)", Language.PYTHON),
            ("import time; time.sleep(0.3)", Language.PYTHON),
            ("sleep 0.3", Language.BASH),
        ):
            before = ticks
            await run(sandbox, code, language, max_output_bytes=1 << 20)
            # The loop went round many times while the code ran: nothing blocked it for the
            # whole run (a blocking call would leave the ticker a handful of turns at most).
            assert ticks - before > 100, (code, ticks - before)
    finally:
        tick.cancel()


async def test_close_leaves_nothing_behind(backend: LocalBackend) -> None:
    sandbox = await backend.create()
    await run(sandbox, "import subprocess\nsubprocess.Popen(['sleep', '1000'])")
    await sandbox.write_file("f.txt", chunks(b"data"), max_bytes=10)
    host_dir, cgroup = sandbox.host_dir, sandbox.cgroup
    assert cgroup is not None and cgroup.pids() and sandbox_processes()
    await sandbox.close()
    assert not sandbox.alive
    assert not host_dir.exists()
    assert not any(d.exists() for d in cgroup.dirs)
    assert str(host_dir) not in MOUNTINFO.read_text()  # noqa: ASYNC240
    assert sandbox_processes() == []
    with pytest.raises(SandboxUnavailable):
        await run(sandbox, "print(1)")
    await sandbox.close()  # idempotent


async def test_aclose_closes_open_sandboxes(make_backend: BackendFactory) -> None:
    backend = await make_backend()
    sandboxes = [await backend.create() for _ in range(2)]
    assert len({s.uid for s in sandboxes}) == 2  # one host uid per sandbox
    await backend.aclose()
    assert not any(s.alive for s in sandboxes)
    assert sandbox_processes() == []


async def test_start_sweeps_a_crashed_instance(
    make_backend: BackendFactory, local_data_dir: Path
) -> None:
    # A service that dies by SIGKILL with a live sandbox leaves its sockets, mount and
    # cgroup behind (its processes die with it: --die-with-parent).
    script = textwrap.dedent(
        f"""
        import asyncio, os, sys
        from pathlib import Path
        from executor.local import LocalBackend
        from executor.settings import ExecutorSettings
        async def main():
            b = LocalBackend(ExecutorSettings(
                _env_file=None, data_dir=Path({str(local_data_dir)!r}),
                sandbox_venv=Path({str(REPO / ".sandbox-venv")!r}), sandbox_uid_base={UID_BASE}))
            await b.start()
            s = await b.create()
            print(b.host.runtime.instance, b.host.runtime.root, flush=True)
            await asyncio.sleep(100)
        asyncio.run(main())
        """
    )
    crashed = subprocess.Popen(  # noqa: ASYNC220
        [sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert crashed.stdout is not None
    line = await asyncio.to_thread(crashed.stdout.readline)
    instance, root = line.split()
    crashed.send_signal(signal.SIGKILL)
    crashed.wait()
    crashed.stdout.close()
    assert leftovers(instance, Path(root))  # its mount, cgroup and dirs are still there
    await make_backend()
    assert leftovers(instance, Path(root)) == []


async def test_missing_bwrap_fails_with_the_install_command(
    local_settings: Callable[..., ExecutorSettings], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    backend = LocalBackend(local_settings())
    with pytest.raises(SandboxUnavailable, match="apt-get install -y bubblewrap"):
        await backend.start()
    await backend.aclose()


async def test_missing_venv_says_to_run_make(make_backend: BackendFactory, tmp_path: Path) -> None:
    with pytest.raises(SandboxUnavailable, match="make"):
        await make_backend(sandbox_venv=tmp_path / "nope")


@pytest.fixture
def private_venv(tmp_path: Path) -> Iterator[Path]:
    """The sandbox venv behind a 0700 directory, as if the repo lived under /root."""
    private = tmp_path / "home"
    venv = private / "venv"
    venv.mkdir(parents=True)
    private.chmod(0o700)
    subprocess.run(["mount", "--bind", str(REPO / ".sandbox-venv"), str(venv)], check=True)
    yield venv
    subprocess.run(["umount", str(venv)], check=True)


async def test_venv_behind_a_private_directory_is_exposed_read_only(
    make_backend: BackendFactory, private_venv: Path
) -> None:
    backend = await make_backend(sandbox_venv=private_venv)
    assert backend.host.venv != private_venv  # bound read-only inside the runtime dir
    sandbox = await backend.create()
    out = await run(sandbox, "import sys, numpy\nprint(sys.prefix)")
    assert out.stdout == "/opt/venv\n", out
    denied = await run(sandbox, "touch /opt/venv/x", Language.BASH)
    assert denied.exit_code != 0
    # Closed here, before the fixture unmounts what the backend's mount points at.
    await backend.aclose()
