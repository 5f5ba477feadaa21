"""Errors of the execution service.

    ExecutorError                    500 server_error
    ├── SandboxRequestFailed         500 server_error / sandbox_request_failed (one request;
    │                                    the sandbox lives on)
    ├── InvalidRequest               400 invalid_request_error
    │   ├── UnsupportedLanguage      400 invalid_request_error / unsupported_language
    │   └── CodeTooLong              400 invalid_request_error / string_above_max_length
    ├── Unauthorized                 401 invalid_request_error / invalid_internal_token
    ├── NotFound                     404 invalid_request_error
    │   ├── SessionNotFound              / session_not_found
    │   └── SandboxFileNotFound          / file_not_found
    ├── FileTooLarge                 413 invalid_request_error / file_too_large
    ├── CapacityExhausted            503 service_unavailable_error / sandbox_capacity (Retry-After)
    └── SandboxUnavailable           503 service_unavailable_error / sandbox_unavailable

Each class carries its HTTP status and OpenAI error `type`/`code`, so both the internal API and
the proxy render it as OpenAI's error JSON without a translation table. The HTTP client turns
the JSON back into the same class by `code`.
"""

from typing import Any, ClassVar


class ExecutorError(Exception):
    """Base of every error the execution service raises on purpose."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    code: ClassVar[str | None] = "executor_error"

    def __init__(
        self, message: str, *, param: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after = retry_after

    def to_body(self) -> dict[str, Any]:
        """OpenAI's error JSON for this error."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class SandboxRequestFailed(ExecutorError):
    code = "sandbox_request_failed"


class InvalidRequest(ExecutorError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class UnsupportedLanguage(InvalidRequest):
    code = "unsupported_language"


class CodeTooLong(InvalidRequest):
    code = "string_above_max_length"


class Unauthorized(ExecutorError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_internal_token"


class NotFound(ExecutorError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class SessionNotFound(NotFound):
    code = "session_not_found"


class SandboxFileNotFound(NotFound):
    code = "file_not_found"


class FileTooLarge(ExecutorError):
    status = 413
    type = "invalid_request_error"
    code = "file_too_large"


class CapacityExhausted(ExecutorError):
    status = 503
    type = "service_unavailable_error"
    code = "sandbox_capacity"


class SandboxUnavailable(ExecutorError):
    status = 503
    type = "service_unavailable_error"
    code = "sandbox_unavailable"


def _subclasses(cls: type[ExecutorError]) -> list[type[ExecutorError]]:
    out = [cls]
    for sub in cls.__subclasses__():
        out.extend(_subclasses(sub))
    return out


def from_body(status: int, body: Any, headers_retry_after: str | None = None) -> ExecutorError:
    """Rebuild the error a remote executor raised from its JSON body."""
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        return SandboxUnavailable(f"executor answered HTTP {status} without an error body")
    code = err.get("code")
    cls = next((c for c in _subclasses(ExecutorError) if c.code == code), None)
    if cls is None:
        cls = SandboxUnavailable if status >= 500 else InvalidRequest
    retry_after = float(headers_retry_after) if headers_retry_after else None
    return cls(str(err.get("message", "")), param=err.get("param"), retry_after=retry_after)
