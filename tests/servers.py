"""Real uvicorn servers on loopback for tests: the app under test, or a scripted fake.

Two shapes, both yielding the server's base URL (`http://127.0.0.1:<port>`):

- `run_server(app)`: a context manager serving the app in a background thread with its own
  event loop. Works with any client, sync or async (the OpenAI SDK, httpx, a subprocess).
- `serve_app(app)`: an async context manager serving the app on the *current* event loop, for
  async tests that want to share objects (a service, a fake backend) with the app directly.

Both run the app's lifespan, bind a free port before starting (no race for the port), fail
loudly if startup fails, and stop the server (closing its connections) on exit.

`wait_until_up(proc, url, log)` is for a service started as its own process (`codeproxy …`):
it waits for `/health`, and fails with the process's log if it died or never answered.
"""

import asyncio
import contextlib
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from codeproxy.web import server_options

STARTUP_TIMEOUT = 30.0
SHUTDOWN_TIMEOUT = 30.0


def _bind(host: str, port: int) -> socket.socket:
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted connections only when the
    # listening socket says TCP, and without it Nagle plus delayed ACKs add ~40 ms per request
    # on the stdlib event loop.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def _config(app: Any, **overrides: Any) -> uvicorn.Config:
    options: dict[str, Any] = {
        # As the services serve in production (request head limits).
        **server_options(),
        "log_level": "warning",
        "lifespan": "on",
        # No websockets implementation: importing one is slow and may warn.
        "ws": "none",
        "timeout_graceful_shutdown": 5,
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)


class _QuietServer(uvicorn.Server):
    """A uvicorn server that leaves the process's signal handlers alone.

    uvicorn answers a failed startup (the app's lifespan raised) with `sys.exit`; here that
    becomes an ordinary error, so it neither kills a thread noisily nor stops an event loop.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().serve(sockets=sockets)
        except SystemExit as exc:
            raise RuntimeError("the test server failed to start (see its log above)") from exc

    def run_quietly(self, sockets: list[socket.socket]) -> None:
        """Thread target: a failed start shows as `started` staying false."""
        with contextlib.suppress(RuntimeError):
            self.run(sockets=sockets)


@contextlib.contextmanager
def run_server(app: Any, *, host: str = "127.0.0.1", port: int = 0, **config: Any) -> Iterator[str]:
    """Serve `app` with uvicorn in a background thread; yield its base URL.

    `port` 0 picks a free one. Extra keyword arguments go to `uvicorn.Config`.
    """
    sock = _bind(host, port)
    server = _QuietServer(_config(app, **config))
    thread = threading.Thread(
        target=server.run_quietly, args=([sock],), name="test-uvicorn", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the test server failed to start (see its log above)")
            if time.monotonic() > deadline:
                raise RuntimeError("the test server did not start in time")
            time.sleep(0.005)
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(SHUTDOWN_TIMEOUT)
        sock.close()
        if thread.is_alive():
            raise RuntimeError("the test server did not stop in time")


@contextlib.asynccontextmanager
async def serve_app(
    app: Any, *, host: str = "127.0.0.1", port: int = 0, **config: Any
) -> AsyncIterator[str]:
    """Serve `app` with uvicorn on the running event loop; yield its base URL."""
    sock = _bind(host, port)
    server = _QuietServer(_config(app, **config))
    task = asyncio.create_task(server.serve(sockets=[sock]), name="test-uvicorn")
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("the test server failed to start (see its log above)")
            if time.monotonic() > deadline:
                raise RuntimeError("the test server did not start in time")
            await asyncio.sleep(0.005)
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        try:
            await asyncio.wait_for(task, SHUTDOWN_TIMEOUT)
        finally:
            sock.close()


def wait_until_up(proc: "subprocess.Popen[bytes]", url: str, log: Path) -> None:
    """Wait for a service started as a process to answer `/health`; its log if it died."""
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
