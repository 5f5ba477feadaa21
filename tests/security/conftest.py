"""The security suite reuses the real-sandbox fixtures of tests/executor and the whole-service
fixtures of tests/e2e (each test tries to break one promise, then checks the sandbox still
works and nothing is left on the host)."""

from tests.e2e.conftest import make_stack, stack
from tests.executor.conftest import (
    backend,
    local_data_dir,
    local_settings,
    make_backend,
    sandbox,
)

__all__ = [
    "backend",
    "local_data_dir",
    "local_settings",
    "make_backend",
    "make_stack",
    "sandbox",
    "stack",
]
