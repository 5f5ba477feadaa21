"""The upstream model: an OpenAI-compatible HTTP API, reached with one shared httpx client.

Requests and responses stay raw JSON so that fields this service does not know pass through
untouched. Transport failures and error statuses become APIErrors here, in one place.
"""

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx

from proxy.errors import UpstreamError, UpstreamUnreachableError, error_body
from proxy.jsonutil import dumps, loads
from proxy.settings import Settings

# Headers of an upstream error that the client needs to retry correctly.
_RETRY_HEADERS = ("retry-after", "retry-after-ms")


class Upstream:
    def __init__(
        self, settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        headers = {"content-type": "application/json"}
        if settings.upstream_api_key is not None:
            headers["authorization"] = f"Bearer {settings.upstream_api_key.get_secret_value()}"
        self._client = httpx.AsyncClient(
            base_url=settings.upstream_base_url.rstrip("/") + "/",
            headers=headers,
            timeout=httpx.Timeout(
                settings.upstream_timeout, connect=settings.upstream_connect_timeout
            ),
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=200),
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def get(self, path: str) -> Any:
        """GET a JSON resource (e.g. `models`)."""
        response = await self._send(self._client.build_request("GET", path), stream=False)
        return _json(response)

    async def post(self, path: str, body: Mapping[str, Any]) -> Any:
        """POST a JSON body and return the parsed JSON answer."""
        request = self._client.build_request("POST", path, content=dumps(body))
        response = await self._send(request, stream=False)
        return _json(response)

    @asynccontextmanager
    async def stream(self, path: str, body: Mapping[str, Any]) -> AsyncIterator[httpx.Response]:
        """POST and keep the response open for streaming; errors are raised before yielding."""
        request = self._client.build_request("POST", path, content=dumps(body))
        response = await self._send(request, stream=True)
        try:
            yield response
        except httpx.TransportError as exc:
            raise UpstreamUnreachableError(f"The upstream model stream broke: {exc!r}.") from exc
        finally:
            await response.aclose()

    async def _send(self, request: httpx.Request, *, stream: bool) -> httpx.Response:
        try:
            response = await self._client.send(request, stream=stream)
        except httpx.TimeoutException as exc:
            raise UpstreamUnreachableError(
                f"The upstream model did not answer in time ({type(exc).__name__}).",
                code="upstream_timeout",
            ) from exc
        except httpx.TransportError as exc:
            raise UpstreamUnreachableError(f"The upstream model is unreachable: {exc!r}.") from exc
        if response.status_code >= 400:
            await response.aread()
            await response.aclose()
            raise _error(response)
        return response


def _json(response: httpx.Response) -> Any:
    try:
        return loads(response.content)
    except ValueError as exc:
        raise UpstreamUnreachableError(
            "The upstream model answered with invalid JSON.", code="upstream_invalid_response"
        ) from exc


def _error(response: httpx.Response) -> UpstreamError:
    try:
        body = loads(response.content)
    except ValueError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("error"), dict):
        text = response.text[:500] or response.reason_phrase
        body = error_body(
            f"Upstream error {response.status_code}: {text}",
            "server_error" if response.status_code >= 500 else "invalid_request_error",
            None,
            "upstream_error",
        )
    headers = {h: response.headers[h] for h in _RETRY_HEADERS if h in response.headers}
    return UpstreamError(response.status_code, body, headers)
