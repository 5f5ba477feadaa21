"""What every sandbox of one local backend shares, decided once by LocalBackend.start()."""

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import zmq.asyncio

from executor.local.bwrap import KERNEL_RUN_DIR
from executor.local.cgroups import CgroupTree
from executor.local.runtime import RuntimeRoot
from executor.local.uids import UidPool
from executor.settings import ExecutorSettings

KERNEL_STARTUP = "/opt/codeproxy/startup.py"
STARTUP_SOURCE = Path(__file__).with_name("kernel_startup.py")


@dataclass(frozen=True)
class Host:
    """What every sandbox of one backend shares (built by LocalBackend.start)."""

    settings: ExecutorSettings
    bwrap: str
    # The venv path bwrap binds at /opt/venv; traversable by the sandbox uids.
    venv: Path
    python_flags: tuple[str, ...]
    seccomp: Path
    # Files copied into every sandbox's /tmp, e.g. the prebuilt matplotlib font cache.
    files: tuple[tuple[bytes, str], ...]
    runtime: RuntimeRoot
    cgroups: CgroupTree | None
    uids: UidPool | None
    loop_data: bool
    # kernel_startup.py, run by each kernel at start-up.
    kernel_startup: bytes
    rlimits: tuple[tuple[int, int], ...]
    zmq: zmq.asyncio.Context
    # The one thread that forks kernels. Popen returns only after the child's preexec_fn,
    # and the first entry into a fresh memory cgroup takes 15-45 ms: on the event loop that
    # would stall every request. It must be one long-lived thread, because bwrap's
    # --die-with-parent fires when the *thread* that forked it exits.
    spawner: ThreadPoolExecutor

    def kernel_command(self) -> list[str]:
        """The command bwrap runs for a kernel (after its options, which go via --args)."""
        # -P keeps /mnt/data off sys.path while the kernel starts (an uploaded `queue.py`
        # must not break start-up); the startup file then appends it for the user's imports.
        return [
            "setsid", "python3", *self.python_flags, "-m", "ipykernel_launcher",
            "-f", f"{KERNEL_RUN_DIR}/conn.json",
            "--HistoryManager.enabled=False",
            "--InteractiveShell.colors=nocolor",
            f'--IPKernelApp.exec_files=["{KERNEL_STARTUP}"]',
        ]  # fmt: skip
