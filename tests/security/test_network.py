"""A sandbox has no network: not the host's loopback, not the metadata service, not DNS."""

import socket
from collections.abc import Iterator

import pytest

from executor.languages import Language
from executor.local import LocalSandbox
from tests.executor.conftest import run

TRY_CONNECT = """
import socket
try:
    socket.create_connection(({host!r}, {port}), timeout=2).close()
    print("connected")
except OSError as e:
    print(type(e).__name__, e.errno)
"""


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A TCP server on the host's loopback, which the sandbox must not reach."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.setblocking(False)
    yield server
    server.close()


def accepted(server: socket.socket) -> bool:
    try:
        conn, _ = server.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


async def test_host_loopback_is_unreachable(sandbox: LocalSandbox, listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    out = await run(sandbox, TRY_CONNECT.format(host="127.0.0.1", port=port))
    assert out.stdout.startswith("ConnectionRefusedError"), out.stdout
    bash = await run(sandbox, f"exec 3<>/dev/tcp/127.0.0.1/{port} && echo connected", Language.BASH)
    assert "connected" not in bash.stdout and bash.exit_code != 0
    js = await run(
        sandbox,
        f"require('net').connect({port}, '127.0.0.1')"
        ".on('connect', () => console.log('connected')).on('error', e => console.log(e.code));",
        Language.JAVASCRIPT,
    )
    assert js.stdout.strip() == "ECONNREFUSED"
    assert not accepted(listener)
    assert (await run(sandbox, "print('still works')")).stdout == "still works\n"


async def test_only_loopback_exists(sandbox: LocalSandbox) -> None:
    out = await run(sandbox, "import socket\nprint([n for _, n in socket.if_nameindex()])")
    assert out.stdout == "['lo']\n"


async def test_metadata_service_is_unreachable(sandbox: LocalSandbox) -> None:
    out = await run(sandbox, TRY_CONNECT.format(host="169.254.169.254", port=80))
    assert "connected" not in out.stdout
    assert out.stdout.startswith("OSError 101"), out.stdout  # ENETUNREACH
    assert (await run(sandbox, "print(1)")).stdout == "1\n"


async def test_dns_does_not_resolve(sandbox: LocalSandbox) -> None:
    out = await run(
        sandbox,
        "import socket\ntry:\n    print(socket.getaddrinfo('pypi.org', 443))\n"
        "except socket.gaierror as e:\n    print('gaierror')",
    )
    assert out.stdout == "gaierror\n"
    pip = await run(
        sandbox,
        "python3 -m pip download --retries 0 --timeout 2 --no-deps -d /tmp/x requests 2>&1"
        " | tail -1",
        Language.BASH,
    )
    assert "Saved" not in pip.stdout
    assert (await run(sandbox, "print(1)")).stdout == "1\n"
