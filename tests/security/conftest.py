"""The security suite reuses the real-sandbox fixtures of tests/executor (each test tries to
break one promise, then checks the sandbox still works and nothing is left on the host)."""

from tests.executor.conftest import (
    backend,
    local_data_dir,
    local_settings,
    make_backend,
    sandbox,
)

__all__ = ["backend", "local_data_dir", "local_settings", "make_backend", "sandbox"]
