"""Settings of the API service, read from `CODEPROXY_*` variables and `.env`."""

import os
import secrets
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MIB = 1024 * 1024
SECRET_KEY_FILE = "secret_key"


class Settings(BaseSettings):
    """Everything the API service needs; built once in the entrypoint and passed in."""

    model_config = SettingsConfigDict(
        env_prefix="CODEPROXY_", env_file=".env", extra="ignore", populate_by_name=True
    )

    upstream_base_url: str = "https://api.openai.com/v1"
    upstream_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("CODEPROXY_UPSTREAM_API_KEY", "OPENAI_API_KEY"),
    )
    upstream_timeout: float = Field(default=600.0, gt=0)
    upstream_connect_timeout: float = Field(default=10.0, gt=0)
    # How Responses requests reach the model: the upstream's own /responses, its chat
    # completions, or `auto` (the first tries /responses and the answer is remembered).
    upstream_responses: Literal["auto", "native", "chat"] = "auto"

    data_dir: Path = Path("./data")
    database_url: str | None = None
    # Migrate the schema at start (under a lock, safe with many replicas); false: refuse to
    # start until `codeproxy db upgrade` has run.
    auto_migrate: bool = True
    # PostgreSQL connections per process: budget replicas * workers * (size + overflow).
    db_pool_size: int = Field(default=5, ge=1)
    db_max_overflow: int = Field(default=5, ge=0)
    blob_url: str | None = None
    s3_endpoint_url: str | None = None
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    secret_key: SecretStr | None = None

    executor_url: Annotated[list[str], NoDecode] = Field(default_factory=list)
    internal_token: SecretStr | None = None
    # Execution nodes are polled this often; one unheard of for `node_dead_after` is dead.
    node_heartbeat_interval: float = Field(default=5.0, gt=0)
    node_dead_after: float = Field(default=20.0, gt=0)

    host: str = "127.0.0.1"
    port: int = 8000
    # Worker processes of `codeproxy proxy`.
    workers: int = Field(default=1, ge=1)
    public_url: str | None = None
    log_level: str = "info"
    log_format: Literal["text", "json"] = "text"
    # How long a process trusts a stored API key it looked up (0: ask the database each time).
    key_cache_ttl: float = Field(default=30.0, ge=0)

    max_upload_bytes: int = Field(default=512 * MIB, ge=1)
    # Bytes of files (uploads plus code outputs) one tenant may keep.
    storage_quota_bytes: int = Field(default=10 * 1024 * MIB, ge=0)
    # Bytes of files and images one execution may export into the tenant's files.
    max_export_bytes: int = Field(default=256 * MIB, ge=0)
    # Code larger than this is refused (the direct API) or answered as an error (the loop).
    max_code_bytes: int = Field(default=1 * MIB, ge=1024)

    # The code-interpreter loop.
    max_rounds: int = Field(default=10, ge=1)
    tool_result_max_chars: int = Field(default=20_000, ge=1000)
    keepalive_interval: float = Field(default=5.0, gt=0)
    code_timeout: float | None = Field(default=None, gt=0)
    max_output_files: int = Field(default=20, ge=0)
    execution_retention_days: float = Field(default=30.0, ge=0)

    # Turning the interpreter on for clients that cannot ask for it (chat apps).
    interpreter: Literal["off", "always", "models"] = "off"
    interpreter_models: Annotated[list[str], NoDecode] = Field(default_factory=list)
    virtual_model_suffix: str = "+code"
    virtual_models: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["*"])

    # Chat apps that serve many users with one key can say who is asking (Open WebUI:
    # ENABLE_FORWARD_USER_INFO_HEADERS); sandbox quotas then count per end user. With a
    # secret (Open WebUI's FORWARD_USER_INFO_HEADER_JWT_SECRET), only a verified JWT counts.
    user_jwt_secret: SecretStr | None = None
    user_jwt_header: str = "X-OpenWebUI-User-Jwt"
    user_id_header: str = "X-OpenWebUI-User-Id"
    chat_id_header: str = "X-OpenWebUI-Chat-Id"

    # What such clients see, and remember across turns.
    transcript: Literal["markdown", "files", "none"] = "markdown"
    link_ttl: int = Field(default=7 * 86400, ge=60)
    max_hidden_chars: int = Field(default=40_000, ge=1000)
    conversation_retention: int = Field(default=7 * 86400, ge=60)

    # Assistants runs: how often the process driving a run says so (a run silent for three
    # intervals lost its process and fails), how long a run waits for tool outputs, and the
    # poll interval suggested to clients (`openai-poll-after-ms`).
    run_heartbeat_interval: float = Field(default=5.0, gt=0)
    run_action_timeout: int = Field(default=600, ge=1)
    run_poll_after_ms: int = Field(default=200, ge=0)

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @field_validator("interpreter_models", "virtual_models", mode="before")
    @classmethod
    def _split_patterns(cls, value: object) -> object:
        if isinstance(value, str):
            return [p.strip() for p in value.split(",") if p.strip()]
        return value

    @field_validator("executor_url", mode="before")
    @classmethod
    def _split_urls(cls, value: object) -> object:
        if isinstance(value, str):
            return [u.strip().rstrip("/") for u in value.split(",") if u.strip()]
        return value

    @property
    def database(self) -> str:
        """The SQLAlchemy async URL; SQLite in the data dir unless configured."""
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'codeproxy.db'}"

    @property
    def blobs(self) -> str:
        """Where file bytes live: CODEPROXY_BLOB_URL, or `blobs/` in the data dir."""
        return self.blob_url or (self.data_dir / "blobs").resolve().as_uri()

    def signing_key(self) -> str:
        """The HS256 key for JWTs and signed links.

        Without CODEPROXY_SECRET_KEY, a strong key is generated on first use and kept (mode
        0600) in the data dir, so tokens survive restarts and no default key ever exists.
        """
        if self.secret_key is not None:
            return self.secret_key.get_secret_value()
        path = self.data_dir / SECRET_KEY_FILE
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            pass
        self.data_dir.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(48)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process won the race; use its key
            return path.read_text().strip()
        with os.fdopen(fd, "w") as f:
            f.write(key)
            f.flush()
            os.fsync(f.fileno())
        return key
