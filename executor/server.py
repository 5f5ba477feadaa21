"""Run the internal API with uvicorn: the `codeproxy executor` entrypoint."""

import ipaddress
import logging

import uvicorn

from codeproxy.web import server_options
from executor.app import create_app
from executor.settings import ExecutorSettings

logger = logging.getLogger(__name__)

# Longer than the proxy client's keep-alive expiry, so the client never reuses a connection
# the server is closing.
KEEP_ALIVE_SECONDS = 30
# On shutdown, running executions get this long before they are cancelled (which stops them).
GRACEFUL_SHUTDOWN_SECONDS = 10


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (`localhost`, 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(settings: ExecutorSettings) -> None:
    """Refuse to listen beyond loopback without an internal token: anyone could run code."""
    if settings.internal_token is None and not is_loopback(settings.host):
        raise SystemExit(
            f"Refusing to serve the executor on {settings.host}: without "
            "CODEPROXY_INTERNAL_TOKEN anyone who can reach it could run code. Set "
            "CODEPROXY_INTERNAL_TOKEN (and the same value on the proxy), or listen on "
            "127.0.0.1."
        )
    if settings.internal_token is not None and not settings.internal_token.get_secret_value():
        raise SystemExit("CODEPROXY_INTERNAL_TOKEN is set but empty.")


def serve(settings: ExecutorSettings) -> None:
    """Serve the internal API until interrupted; logging is configured by the caller."""
    check_bind(settings)
    if settings.internal_token is None:
        logger.warning("no CODEPROXY_INTERNAL_TOKEN: the executor accepts any local caller")
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        # The caller's logging configuration stays in charge; the access line comes from the
        # app's MetricsMiddleware, in that configuration.
        log_config=None,
        access_log=False,
        **server_options(),
    )
