"""E2BBackend: starts E2B sandboxes from a template, with no internet access."""

import asyncio
import importlib
from typing import TYPE_CHECKING, Any

from executor.e2b.errors import translated
from executor.e2b.sandbox import LIFETIME_MARGIN, REQUEST_TIMEOUT, E2BSandbox
from executor.errors import SandboxUnavailable
from executor.settings import ExecutorSettings

if TYPE_CHECKING:
    from executor.backend import Sandbox, SandboxBackend

CREATE_TIMEOUT = 60.0


class E2BBackend:
    """Creates E2B sandboxes from `settings.e2b_template`; implements SandboxBackend."""

    name = "e2b"

    def __init__(self, settings: ExecutorSettings, sdk: Any = None) -> None:
        self._settings = settings
        self._sdk = sdk
        # Sandbox lifetime on E2B's side, refreshed on use (see E2BSandbox._keep_alive).
        self.lifetime = settings.session_idle_timeout + settings.exec_timeout_max + LIFETIME_MARGIN

    async def start(self) -> None:
        """Check the API key and import the SDK (the optional `e2b` extra)."""
        if self._settings.e2b_api_key is None:
            raise SandboxUnavailable(
                "The e2b sandbox backend needs an API key: set E2B_API_KEY or "
                "CODEPROXY_E2B_API_KEY."
            )
        if self._sdk is None:
            try:
                self._sdk = importlib.import_module("e2b_code_interpreter")
            except ImportError as exc:
                raise SandboxUnavailable(
                    "The e2b sandbox backend needs the SDK: pip install 'codeproxy[e2b]'."
                ) from exc

    async def create(self) -> E2BSandbox:
        """Start a sandbox whose Python kernel is ready, in /mnt/data."""
        if self._sdk is None:
            raise SandboxUnavailable("The e2b backend has not been started.")
        assert self._settings.e2b_api_key is not None
        options: dict[str, Any] = {
            "api_key": self._settings.e2b_api_key.get_secret_value(),
            "request_timeout": REQUEST_TIMEOUT,
        }
        if self._settings.e2b_domain:
            options["domain"] = self._settings.e2b_domain
        with translated(self._sdk):
            sbx = await asyncio.wait_for(
                self._sdk.AsyncSandbox.create(
                    self._settings.e2b_template,
                    timeout=int(self.lifetime),
                    allow_internet_access=False,
                    metadata={"app": "codeproxy"},
                    **options,
                ),
                CREATE_TIMEOUT,
            )
        sandbox = E2BSandbox(sbx, self._sdk, self._settings, self.lifetime)
        try:
            await sandbox.prepare()
        except BaseException:
            await sandbox.close()
            raise
        return sandbox

    async def aclose(self) -> None:
        """Nothing to do: the pool closes every sandbox, and E2B expires any we lost."""


if TYPE_CHECKING:
    # mypy proves the contract: both classes satisfy executor.backend's protocols.
    def _conforms(backend: E2BBackend, sandbox: E2BSandbox) -> "tuple[SandboxBackend, Sandbox]":
        return backend, sandbox
