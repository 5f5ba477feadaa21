"""Settings of the execution service, read from `CODEPROXY_*` variables and `.env`."""

import os
import resource
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

MIB = 1024 * 1024

# What one sandbox costs the host while it idles: an idle kernel in its bubblewrap sandbox is
# about 45 MB; 64 leaves room for the first imports. At most half of the memory goes to idle
# sandboxes: the rest is for the service and for sandboxes at work.
IDLE_SANDBOX_MB = 64
# The service holds about ten descriptors per local sandbox (sockets, pidfd, cgroup files).
FILES_PER_SANDBOX = 16
RESERVED_FILES = 256
MIN_SANDBOXES, MAX_SANDBOXES = 4, 1024


def memory_bytes() -> int:
    """The memory this process may use: the host's, or its cgroup's limit if lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in (
        Path("/sys/fs/cgroup/memory.max"),  # cgroup v2
        Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),  # cgroup v1
    ):
        try:
            limit = limit_file.read_text().strip()
        except OSError:
            continue
        if limit.isdigit():
            total = min(total, int(limit))
    return total


def default_max_sandboxes() -> int:
    """How many sandboxes this machine can keep: half its memory at IDLE_SANDBOX_MB each,
    within the open-file limit: about 190 on a 24 GB host."""
    count = memory_bytes() // 2 // (IDLE_SANDBOX_MB * MIB)
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY:
        count = min(count, (soft - RESERVED_FILES) // FILES_PER_SANDBOX)
    return max(MIN_SANDBOXES, min(count, MAX_SANDBOXES))


class ExecutorSettings(BaseSettings):
    """Everything the execution service needs; built once in the entrypoint and passed in."""

    model_config = SettingsConfigDict(
        env_prefix="CODEPROXY_", env_file=".env", extra="ignore", populate_by_name=True
    )

    data_dir: Path = Path("./data")
    host: str = "127.0.0.1"
    port: int = 8000
    internal_token: SecretStr | None = None
    # This node's name among execution nodes; unset: "<hostname>:<port>".
    node_id: str | None = None

    sandbox_backend: Literal["local", "e2b"] = "local"
    # The read-only Python environment mounted at /opt/venv inside local sandboxes.
    sandbox_venv: Path = Path(".sandbox-venv")
    # Local backend: per-sandbox sockets and mount points (None: /run/codeproxy as root,
    # else a per-user dir). Kept short: unix socket paths are limited to 107 bytes.
    sandbox_runtime_dir: Path | None = None
    # Local backend as root: sandboxes run as host uids leased from base upwards.
    sandbox_uid_base: int = Field(default=200_000, ge=1000)
    # Local backend: False skips cgroups and limits sandboxes with rlimits only.
    sandbox_cgroups: bool = True
    sandbox_start_timeout: float = Field(default=30.0, gt=0)

    e2b_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("CODEPROXY_E2B_API_KEY", "E2B_API_KEY")
    )
    e2b_template: str = "code-interpreter-v1"
    e2b_domain: str | None = None

    pool_size: int = Field(default=2, ge=0)
    max_sandboxes: int = Field(default_factory=default_max_sandboxes, ge=1)
    # None: half of max_sandboxes, so that one API key cannot take the whole machine.
    max_sandboxes_per_tenant: int | None = Field(default=None, ge=1)
    # Per end user, when the tenant's app names its users (chat apps: one key, many users).
    max_sandboxes_per_user: int = Field(default=8, ge=1)
    acquire_timeout: float = Field(default=10.0, ge=0)
    # Sandboxes started at once: a start is about half a second of CPU, with some waiting,
    # so two per core keep the cores busy without slowing every start down.
    max_starting: int = Field(default_factory=lambda: 2 * (os.cpu_count() or 1), ge=1)
    session_idle_timeout: float = Field(default=1200.0, gt=0)
    # The longest idle timeout a session may ask for.
    session_idle_timeout_max: float = Field(default=86400.0, gt=0)
    reaper_interval: float = Field(default=15.0, gt=0)

    exec_timeout: float = Field(default=30.0, gt=0)
    exec_timeout_max: float = Field(default=300.0, gt=0)
    interrupt_grace: float = Field(default=2.0, ge=0)
    max_output_bytes: int = Field(default=1 * MIB, ge=1024)
    # Code larger than this is refused before it reaches a sandbox.
    max_code_bytes: int = Field(default=1 * MIB, ge=1024)

    memory_limit_mb: int = Field(default=1024, ge=128)
    # The largest memory cap a session may ask for (None: memory_limit_mb, no raising).
    memory_limit_max_mb: int | None = Field(default=None, ge=128)
    pids_limit: int = Field(default=256, ge=32)
    cpu_quota: float = Field(default=1.0, gt=0)
    tmp_size_mb: int = Field(default=256, ge=16)
    data_size_mb: int = Field(default=512, ge=16)
    max_file_bytes: int = Field(default=512 * MIB, ge=1)

    @property
    def tenant_quota(self) -> int:
        """The most sandboxes one tenant may hold."""
        if self.max_sandboxes_per_tenant is not None:
            return self.max_sandboxes_per_tenant
        return max(1, self.max_sandboxes // 2)
