"""Settings of the execution service, read from `CODEPROXY_*` variables and `.env`."""

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

MIB = 1024 * 1024


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
    max_sandboxes: int = Field(default=16, ge=1)
    max_sandboxes_per_tenant: int = Field(default=4, ge=1)
    acquire_timeout: float = Field(default=10.0, ge=0)
    session_idle_timeout: float = Field(default=1200.0, gt=0)
    reaper_interval: float = Field(default=15.0, gt=0)

    exec_timeout: float = Field(default=30.0, gt=0)
    exec_timeout_max: float = Field(default=300.0, gt=0)
    interrupt_grace: float = Field(default=2.0, ge=0)
    max_output_bytes: int = Field(default=1 * MIB, ge=1024)
    # Code larger than this is refused before it reaches a sandbox.
    max_code_bytes: int = Field(default=1 * MIB, ge=1024)

    memory_limit_mb: int = Field(default=1024, ge=128)
    pids_limit: int = Field(default=256, ge=32)
    cpu_quota: float = Field(default=1.0, gt=0)
    tmp_size_mb: int = Field(default=256, ge=16)
    data_size_mb: int = Field(default=512, ge=16)
    max_file_bytes: int = Field(default=512 * MIB, ge=1)
