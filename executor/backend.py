"""The small protocol every sandbox backend implements (local bubblewrap, E2B)."""

from collections.abc import AsyncIterable, AsyncIterator
from typing import Protocol, runtime_checkable

from executor.languages import Language
from executor.models import FileEntry, RunOutcome


class Sandbox(Protocol):
    """One isolated sandbox: a stateful Python kernel, one-shot runners and /mnt/data."""

    @property
    def id(self) -> str: ...

    @property
    def alive(self) -> bool:
        """False once the sandbox died or was closed; the pool then replaces it."""
        ...

    async def run(
        self, code: str, language: Language, *, timeout: float, max_output_bytes: int
    ) -> RunOutcome:
        """Run code with a wall-clock deadline.

        Past the deadline: interrupt, wait a short grace, then kill and restart the sandbox
        (`timed_out=True`, and `state_lost=True` if it was restarted). Output beyond
        `max_output_bytes` per stream is dropped and flagged. Cancelling the call interrupts
        the code in the same way.
        """
        ...

    async def write_file(
        self, path: str, chunks: AsyncIterable[bytes], *, max_bytes: int
    ) -> FileEntry:
        """Write a file under /mnt/data (`path` relative to it), creating parent folders."""
        ...

    async def read_file(self, path: str) -> AsyncIterator[bytes]:
        """Open a regular file under /mnt/data for streaming; never follows symlinks.

        Raises SandboxFileNotFound before returning when the file is missing.
        """
        ...

    async def list_files(self) -> list[FileEntry]:
        """Every regular file under /mnt/data (symlinks and special files are skipped)."""
        ...

    async def interrupt(self) -> None: ...

    async def close(self) -> None:
        """Kill every process of the sandbox and remove everything it left on the host."""
        ...


@runtime_checkable
class MemoryCapped(Protocol):
    """A sandbox whose memory cap can be set after it started (to fit a session's options)."""

    async def set_memory_limit(self, mb: int) -> None:
        """Cap the sandbox's memory at `mb` MiB from now on, across kernel restarts."""
        ...


class SandboxBackend(Protocol):
    """Creates sandboxes of one kind."""

    name: str

    async def start(self) -> None:
        """Check prerequisites and sweep leftovers of a previous crash."""
        ...

    async def create(self) -> Sandbox:
        """Start a new sandbox whose Python kernel is ready to run code."""
        ...

    async def aclose(self) -> None: ...
