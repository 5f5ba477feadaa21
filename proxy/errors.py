"""Errors of the API service and the one place they become OpenAI's error JSON.

    APIError                          500 server_error
    ├── InvalidRequestError           400 invalid_request_error       (param names the field)
    ├── AuthenticationError           401 invalid_request_error / invalid_api_key
    ├── NotFoundError                 404 invalid_request_error
    ├── MethodNotAllowedError         405 invalid_request_error / method_not_allowed
    ├── PayloadTooLargeError          413 invalid_request_error / file_too_large
    │   └── QuotaExceededError        413 insufficient_quota / insufficient_quota
    ├── UpstreamError                 the upstream's own status and body, passed through
    ├── UpstreamUnreachableError      502 server_error / upstream_unreachable
    └── ServiceUnavailableError       503 service_unavailable_error

Foreign errors are translated here and nowhere else: Starlette's HTTP errors, request
validation errors, the execution service's `ExecutorError`s, a failing blob store (503
storage_unavailable), and anything unexpected (a 500 whose message hides the details, which
are logged).
"""

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from codeproxy.web import (
    METHOD_NOT_ALLOWED,
    UNKNOWN_URL,
    describe_validation_errors,
    error_body,
)
from executor.api import ExecutorError
from proxy.jsonutil import JSONResponse
from storage.blobs import BlobStoreError

logger = logging.getLogger(__name__)


class APIError(Exception):
    """Base of every error the API service raises on purpose."""

    status: int = 500
    type: str = "server_error"
    default_code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


class InvalidRequestError(APIError):
    status = 400
    type = "invalid_request_error"


class AuthenticationError(APIError):
    status = 401
    type = "invalid_request_error"
    default_code = "invalid_api_key"


class NotFoundError(APIError):
    status = 404
    type = "invalid_request_error"


class MethodNotAllowedError(APIError):
    status = 405
    type = "invalid_request_error"
    default_code = "method_not_allowed"


class PayloadTooLargeError(APIError):
    status = 413
    type = "invalid_request_error"
    default_code = "file_too_large"


class QuotaExceededError(PayloadTooLargeError):
    """The tenant's stored files would pass its storage quota (413: retrying cannot help)."""

    type = "insufficient_quota"
    default_code = "insufficient_quota"


class UpstreamError(APIError):
    """The upstream answered with an error: its status, body and retry headers pass through."""

    def __init__(self, status: int, body: dict[str, Any], headers: Mapping[str, str]) -> None:
        err = body.get("error")
        message = err.get("message") if isinstance(err, dict) else None
        super().__init__(str(message or f"upstream error {status}"), headers=headers)
        self.upstream_status = status
        self.upstream_body = body

    def body(self) -> dict[str, Any]:
        return self.upstream_body


class UpstreamUnreachableError(APIError):
    status = 502
    type = "server_error"
    default_code = "upstream_unreachable"


class ServiceUnavailableError(APIError):
    status = 503
    type = "service_unavailable_error"
    default_code = "service_unavailable"


def status_of(exc: APIError) -> int:
    return exc.upstream_status if isinstance(exc, UpstreamError) else exc.status


def translate(exc: BaseException) -> APIError:
    """Any exception as an APIError, so that every error reaches the client in one shape."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, ExecutorError):
        err: APIError
        headers = {}
        if exc.retry_after is not None:
            headers["retry-after"] = str(max(1, round(exc.retry_after)))
        err = {
            400: InvalidRequestError,
            404: NotFoundError,
            413: PayloadTooLargeError,
        }.get(exc.status, ServiceUnavailableError)(
            exc.message, param=exc.param, code=exc.code, headers=headers
        )
        return err
    if isinstance(exc, BlobStoreError):
        logger.error("the blob store failed: %s", exc)
        return ServiceUnavailableError(
            "The file store is unavailable; retry later.", code="storage_unavailable"
        )
    logger.error("unexpected error", exc_info=exc)
    return APIError("The server had an error while processing your request.")


def render(exc: APIError, headers: Mapping[str, str] | None = None) -> Response:
    return JSONResponse(
        exc.body(), status_code=status_of(exc), headers={**exc.headers, **(headers or {})}
    )


def invalid_json() -> InvalidRequestError:
    """OpenAI's answer to a body that is not JSON."""
    return InvalidRequestError(
        "We could not parse the JSON body of your request. (HINT: This likely means you "
        "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload.)",
        code="invalid_json",
    )


def _validation_error(exc: RequestValidationError) -> InvalidRequestError:
    code, param, message = describe_validation_errors(exc.errors())
    if code == "invalid_json":
        return invalid_json()
    return InvalidRequestError(message, param=param, code=code)


def _http_error(exc: StarletteHTTPException) -> APIError:
    if exc.status_code == 404:
        return NotFoundError(UNKNOWN_URL, code="unknown_url")
    if exc.status_code == 405:
        return MethodNotAllowedError(METHOD_NOT_ALLOWED)
    err = APIError(str(exc.detail))
    err.status = exc.status_code
    err.type = "invalid_request_error" if exc.status_code < 500 else "server_error"
    return err


def render_unexpected(exc: Exception) -> Response:
    """The answer to an exception that escaped every handler (see RequestIdMiddleware)."""
    return render(translate(exc))


def install_handlers(app: FastAPI) -> None:
    """The one error handler of the API service (RequestIdMiddleware renders the rest)."""

    async def handle(request: Request, exc: Exception) -> Response:
        if isinstance(exc, RequestValidationError):
            return render(_validation_error(exc))
        if isinstance(exc, StarletteHTTPException):
            return render(_http_error(exc))
        return render(translate(exc))

    app.add_exception_handler(RequestValidationError, handle)
    app.add_exception_handler(StarletteHTTPException, handle)
    app.add_exception_handler(APIError, handle)
    app.add_exception_handler(ExecutorError, handle)
