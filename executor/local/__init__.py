"""The `local` sandbox backend: bubblewrap + ipykernel over IPC sockets on this host."""

from executor.local.backend import LocalBackend
from executor.local.sandbox import LocalSandbox

__all__ = ["LocalBackend", "LocalSandbox"]
