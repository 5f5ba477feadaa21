"""A huge header is refused while it is parsed, before authentication or routing does any work:
by the API service and by the execution service, as their command lines start them."""

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import REPO
from tests.e2e.test_two_services import free_port, service
from tests.upstream import ScriptedUpstream

TOKEN = "internal-token-" + "h" * 32
HEADER_MB = 200


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def server_pid(port: int) -> int:
    """The pid of the process listening on 127.0.0.1:`port`."""
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == f"0100007F:{port:04X}" and fields[3] == "0A":
            inode = fields[9]
    assert inode is not None
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if any(fd.readlink().name == f"socket:[{inode}]" for fd in (proc / "fd").iterdir()):
                    return int(proc.name)
            except OSError:
                continue
    raise AssertionError(f"nobody listens on {port}")


def send_huge_header(url: str) -> bytes:
    """A GET with one 200 MB header, sent as fast as the server takes it; returns its answer."""
    host, port = url.removeprefix("http://").split(":")
    chunk = b"a" * (1024 * 1024)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        try:
            sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: ")
            for _ in range(HEADER_MB):
                sock.sendall(chunk)
            sock.sendall(b"\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused mid-header: what we want
        try:
            return sock.recv(4096)
        except (ConnectionResetError, TimeoutError):
            return b""


@pytest.fixture
def executor_url(tmp_path: Path) -> Iterator[str]:
    env = {
        "CODEPROXY_INTERNAL_TOKEN": TOKEN,
        "CODEPROXY_DATA_DIR": str(tmp_path / "executor"),
        "CODEPROXY_SANDBOX_VENV": str(REPO / ".sandbox-venv"),
        "CODEPROXY_POOL_SIZE": "0",
    }
    with service(["executor"], env, free_port(), tmp_path / "executor.log") as url:
        yield url


@pytest.fixture
def proxy_url(tmp_path: Path, executor_url: str, upstream: ScriptedUpstream) -> Iterator[str]:
    env = {
        "CODEPROXY_EXECUTOR_URL": executor_url,
        "CODEPROXY_INTERNAL_TOKEN": TOKEN,
        "CODEPROXY_API_KEYS": "sk-header-test",
        "CODEPROXY_UPSTREAM_BASE_URL": upstream.url + "/v1",
        "CODEPROXY_DATA_DIR": str(tmp_path / "proxy"),
    }
    with service(["proxy"], env, free_port(), tmp_path / "proxy.log") as url:
        yield url


def test_a_huge_header_is_refused_while_parsing(proxy_url: str, executor_url: str) -> None:
    for which, url in (("proxy", proxy_url), ("executor", executor_url)):
        pid = server_pid(int(url.rsplit(":", 1)[1]))
        before = rss_mb(pid)
        answer = send_huge_header(url)
        growth = rss_mb(pid) - before
        assert growth < 32, f"the {which} grew by {growth:.0f} MB"
        assert answer == b"" or answer.startswith((b"HTTP/1.1 400", b"HTTP/1.1 431")), answer
        # The service still serves everyone else.
        assert httpx.get(url + "/health", timeout=10).status_code == 200
