"""The SDK's exceptions as `ExecutorError`s: the one place that knows them.

The SDK raises its own classes, and lets raw `httpx` transport errors through (the server died
mid-stream: RemoteProtocolError; it is gone: ConnectError; a stream stalled: ReadTimeout).
Both mean the sandbox cannot be used any more: SandboxUnavailable, and the pool replaces it.
An HTTP error the server answered for one request (a 500 for a kernel language the template
lacks, a 400) is that request's failure only: SandboxRequestFailed, and the sandbox lives on.
"""

import contextlib
import logging
import re
from collections.abc import Iterator
from typing import Any

import httpx

from executor.errors import (
    CapacityExhausted,
    ExecutorError,
    SandboxFileNotFound,
    SandboxRequestFailed,
    SandboxUnavailable,
)

logger = logging.getLogger(__name__)

# How the SDK words an HTTP error it has no class for: "<status> <reason>[: <body>]".
_HTTP_ERROR = re.compile(r"^(\d{3}) ")
# Statuses of the proxy in front of a sandbox that is gone or unreachable.
_GATEWAY = {502, 503, 504}


class CommandExit(Exception):
    """Carries the result of a command that exited non-zero (the SDK raises for those)."""

    def __init__(self, result: Any) -> None:
        super().__init__(f"exit code {result.exit_code}")
        self.result = result


def _request_error(sdk: Any, exc: BaseException) -> bool:
    """An HTTP error answered for one request, as the SDK raises it: its base class only."""
    if type(exc) is not sdk.SandboxException:
        return False
    match = _HTTP_ERROR.match(str(exc))
    return match is not None and int(match.group(1)) not in _GATEWAY


@contextlib.contextmanager
def translated(sdk: Any, file: str | None = None) -> Iterator[None]:
    """Turn the SDK's exceptions (and raw transport errors) into ExecutorErrors."""
    try:
        yield
    except ExecutorError:
        raise
    except sdk.CommandExitException as exc:
        raise CommandExit(exc) from None
    except sdk.FileNotFoundException as exc:
        raise SandboxFileNotFound(f"No such file: {file}", param="path") from exc
    except sdk.RateLimitException as exc:
        raise CapacityExhausted("E2B's rate limit was reached.", retry_after=5.0) from exc
    except sdk.AuthenticationException as exc:
        raise SandboxUnavailable("E2B rejected the API key.") from exc
    except sdk.NotFoundException as exc:
        if file is not None:
            raise SandboxFileNotFound(f"No such file: {file}", param="path") from exc
        raise SandboxUnavailable("The E2B sandbox is gone.") from exc
    except (sdk.SandboxException, sdk.TimeoutException) as exc:
        if _request_error(sdk, exc):
            logger.warning("E2B request failed: %s", exc)
            raise SandboxRequestFailed(f"The E2B sandbox failed the request: {exc}") from exc
        logger.warning("E2B call failed: %s", exc)
        raise SandboxUnavailable(f"The E2B sandbox failed: {type(exc).__name__}.") from exc
    except httpx.TransportError as exc:
        logger.warning("E2B sandbox unreachable: %r", exc)
        raise SandboxUnavailable(
            f"The E2B sandbox could not be reached: {type(exc).__name__}."
        ) from exc
