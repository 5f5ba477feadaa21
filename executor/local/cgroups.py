"""Per-sandbox cgroups (v1 or v2): memory without swap, a pids cap and a cpu quota.

One sandbox's kernel and its one-shot runs share one cgroup. The processes enter it in the
child before exec (see `bwrap.Confinement`), so nothing runs unlimited even for a moment.

cgroup v1 has neither `cgroup.kill` nor `memory.oom.group`: killing the outer bwrap takes the
whole pid namespace down (`--die-with-parent`), and `kill()` below is the fallback that SIGKILLs
whatever is still listed.
"""

import asyncio
import contextlib
import errno
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
PARENT = "codeproxy"
V1_CONTROLLERS = ("memory", "pids", "cpu")
CPU_PERIOD_US = 100_000


@dataclass(frozen=True)
class Limits:
    """Per-sandbox limits: memory (swap included), tasks and CPUs."""

    memory_bytes: int
    pids: int
    cpu_quota: float


def _write(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _read_key(path: Path, key: str) -> int:
    """The value of `key N` in a flat-keyed cgroup file (memory.oom_control, memory.events)."""
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except OSError:
        pass
    return 0


class SandboxCgroup:
    """The cgroup directories (one per v1 controller, or one v2 dir) of one sandbox."""

    def __init__(self, dirs: list[Path], *, v2: bool) -> None:
        self.dirs = dirs
        self.v2 = v2

    @property
    def name(self) -> str:
        """The cgroup's directory name (`<instance>-<sandbox>`)."""
        return self.dirs[0].name

    @property
    def procs_files(self) -> list[str]:
        """Files the child writes its pid into to enter the cgroup."""
        return [str(d / "cgroup.procs") for d in self.dirs]

    def pids(self) -> list[int]:
        """Every process still in the cgroup."""
        found: set[int] = set()
        for d in self.dirs:
            try:
                text = (d / "cgroup.procs").read_text()
            except OSError:
                continue
            found.update(int(p) for p in text.split())
        return sorted(found)

    def oom_kills(self) -> int:
        """How many processes the kernel's OOM killer has killed in this cgroup so far."""
        if self.v2:
            return _read_key(self.dirs[0] / "memory.events", "oom_kill")
        return _read_key(self.dirs[0] / "memory.oom_control", "oom_kill")

    def set_memory(self, memory_bytes: int) -> None:
        """Change the memory cap (swap still off). Below what is in use, the kernel reclaims
        or OOM-kills, as for any cgroup."""
        d = self.dirs[0]
        if self.v2:
            _write(d / "memory.max", str(memory_bytes))
            return
        # v1 wants memsw >= limit at every moment: raise memsw first, lower it last.
        memsw = d / "memory.memsw.limit_in_bytes"
        has_memsw = memsw.exists()
        raising = memory_bytes > int((d / "memory.limit_in_bytes").read_text())
        if has_memsw and raising:
            _write(memsw, str(memory_bytes))
        _write(d / "memory.limit_in_bytes", str(memory_bytes))
        if has_memsw and not raising:
            _write(memsw, str(memory_bytes))

    def memory_usage(self) -> int:
        """Bytes charged to the cgroup, page cache and tmpfs included."""
        name = "memory.current" if self.v2 else "memory.usage_in_bytes"
        try:
            return int((self.dirs[0] / name).read_text())
        except (OSError, ValueError):
            return 0

    def kill(self) -> None:
        """SIGKILL every process in the cgroup."""
        if self.v2 and (self.dirs[0] / "cgroup.kill").exists():
            try:
                _write(self.dirs[0] / "cgroup.kill", "1")
                return
            except OSError:
                pass
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    async def wait_empty(self, timeout: float = 5.0) -> bool:
        """Wait until no process is left, SIGKILLing stragglers; False if some survived."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        delay = 0.002
        while self.pids():
            if loop.time() > end:
                return False
            self.kill()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
        return True

    async def remove(self, timeout: float = 5.0) -> None:
        """Kill what is left and rmdir; the kernel answers EBUSY for a few ms after exit."""
        if not await self.wait_empty(timeout):
            log.error("cgroup %s still has processes %s after SIGKILL", self.name, self.pids())
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        for d in self.dirs:
            while True:
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    if e.errno != errno.EBUSY or loop.time() > end:
                        log.error("cannot remove cgroup %s: %s", d, e)
                        break
                    await asyncio.sleep(0.01)


SANDBOX_CPU_SHARES_V1 = 256  # the default is 1024
SANDBOX_CPU_WEIGHT_V2 = 25  # the default is 100


class CgroupTree:
    """Where our cgroups live: `<controller>/codeproxy/<name>` on v1, `codeproxy/<name>` on v2."""

    def __init__(self, parents: list[Path], *, v2: bool) -> None:
        self.parents = parents
        self.v2 = v2

    @classmethod
    def detect(cls, root: Path = CGROUP_ROOT) -> "CgroupTree":
        """Find a usable hierarchy and create our parent group in it.

        Raises OSError (with a readable message) when cgroups cannot be used here.
        """
        controllers_file = root / "cgroup.controllers"
        if controllers_file.exists():
            available = set(controllers_file.read_text().split())
            missing = {"memory", "pids", "cpu"} - available
            if missing:
                raise OSError(f"cgroup v2 at {root} lacks controllers {sorted(missing)}")
            tree = cls([root / PARENT], v2=True)
        else:
            for c in V1_CONTROLLERS:
                if not (root / c / "cgroup.procs").exists():
                    raise OSError(f"no cgroup v1 '{c}' controller mounted at {root / c}")
            tree = cls([root / c / PARENT for c in V1_CONTROLLERS], v2=False)
        tree._make_parents()
        return tree

    def _make_parents(self) -> None:
        for p in self.parents:
            p.mkdir(exist_ok=True)
        if self.v2:
            for d in (self.parents[0].parent, self.parents[0]):
                current = set((d / "cgroup.subtree_control").read_text().split())
                wanted = {"memory", "pids", "cpu"} - current
                if wanted:
                    _write(d / "cgroup.subtree_control", " ".join(f"+{c}" for c in wanted))
        # All sandboxes together weigh a quarter of a default task when the CPU is contended,
        # so busy user code (or a kernel starting for the pool) cannot starve the service
        # that answers requests. Idle CPU is still theirs to use, up to each one's quota.
        with contextlib.suppress(OSError):
            if self.v2:
                _write(self.parents[0] / "cpu.weight", str(SANDBOX_CPU_WEIGHT_V2))
            else:
                _write(
                    self.parents[V1_CONTROLLERS.index("cpu")] / "cpu.shares",
                    str(SANDBOX_CPU_SHARES_V1),
                )

    def remove_parents(self) -> None:
        """rmdir our parent groups; fails harmlessly while any sandbox cgroup exists."""
        for p in self.parents:
            with contextlib.suppress(OSError):
                p.rmdir()

    def create(self, name: str, limits: Limits) -> SandboxCgroup:
        """Create the sandbox's cgroup with its limits (synchronous: about 0.5 ms)."""
        cg = SandboxCgroup([p / name for p in self.parents], v2=self.v2)
        try:
            for d in cg.dirs:
                try:
                    d.mkdir()
                except FileNotFoundError:
                    # Another instance's close() removed the empty parent meanwhile.
                    self._make_parents()
                    d.mkdir()
            if self.v2:
                self._limit_v2(cg.dirs[0], limits)
            else:
                self._limit_v1(cg.dirs, limits)
        except BaseException:
            for d in cg.dirs:
                with contextlib.suppress(OSError):
                    d.rmdir()
            raise
        return cg

    @staticmethod
    def _limit_v1(dirs: list[Path], limits: Limits) -> None:
        memory, pids, cpu = dirs
        _write(memory / "memory.limit_in_bytes", str(limits.memory_bytes))
        # memsw = limit means no swap at all; the file is missing when swap accounting is off,
        # and swappiness 0 then keeps anonymous memory out of swap.
        if (memory / "memory.memsw.limit_in_bytes").exists():
            _write(memory / "memory.memsw.limit_in_bytes", str(limits.memory_bytes))
        with contextlib.suppress(OSError):
            _write(memory / "memory.swappiness", "0")
        _write(pids / "pids.max", str(limits.pids))
        _write(cpu / "cpu.cfs_period_us", str(CPU_PERIOD_US))
        _write(cpu / "cpu.cfs_quota_us", str(max(1000, int(limits.cpu_quota * CPU_PERIOD_US))))

    @staticmethod
    def _limit_v2(d: Path, limits: Limits) -> None:
        _write(d / "memory.max", str(limits.memory_bytes))
        if (d / "memory.swap.max").exists():
            _write(d / "memory.swap.max", "0")
        # One OOM kill takes the whole sandbox down instead of leaving a half-dead kernel.
        _write(d / "memory.oom.group", "1")
        _write(d / "pids.max", str(limits.pids))
        quota = max(1000, int(limits.cpu_quota * CPU_PERIOD_US))
        _write(d / "cpu.max", f"{quota} {CPU_PERIOD_US}")

    def names(self) -> list[str]:
        """Names of every sandbox cgroup under our parent (ours or a previous run's)."""
        found: set[str] = set()
        for p in self.parents:
            try:
                found.update(e.name for e in os.scandir(p) if e.is_dir(follow_symlinks=False))
            except OSError:
                continue
        return sorted(found)

    def get(self, name: str) -> SandboxCgroup:
        """The cgroup called `name` under our parent (for the sweep)."""
        return SandboxCgroup([p / name for p in self.parents], v2=self.v2)
