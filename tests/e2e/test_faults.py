"""Faults of the world around the service: the upstream hanging up mid-stream, the database
file turning read-only or its disk filling up. Each ends in a clear, OpenAI-shaped error, and
nothing is left half-done: no leased sandbox, no half-written row, no orphan blob."""

import contextlib
import io
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy.engine import make_url

from proxy.jsonutil import loads
from tests.e2e.conftest import Stack
from tests.proxy.conftest import KEY_A
from tests.upstream import Cut, code_call, completion

A = {"authorization": f"Bearer {KEY_A}"}


def stream_events(stack: Stack, body: dict[str, Any]) -> list[Any]:
    events: list[Any] = []
    with httpx.stream(
        "POST", f"{stack.url}/v1/chat/completions", json=body, headers=A, timeout=60
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:] if line == "data: [DONE]" else loads(line[6:]))
    return events


def test_the_upstream_hanging_up_mid_stream_is_an_in_band_error(stack: Stack) -> None:
    stack.upstream.push(
        completion(tool_calls=[code_call("x = 'still here'")]),
        Cut(completion("This answer never ends because the upstream hangs up."), chunks=2),
    )
    body = {
        "model": "gpt-test+code",
        "messages": [{"role": "user", "content": "go"}],
        "stream": True,
    }
    events = stream_events(stack, body)
    # The chunks that made it, then one error event, and the stream ends (no [DONE]).
    *chunks, last = events
    assert all(e["object"] == "chat.completion.chunk" for e in chunks)
    assert set(last) == {"error"}
    assert last["error"]["type"] == "server_error"
    assert last["error"]["code"] == "upstream_unreachable"
    # The sandbox is not held by the broken request: the session is idle and usable.
    health = httpx.get(f"{stack.url}/ready").json()["executor"]
    assert (health["busy"], health["sessions"]) == (0, 1)
    [session] = httpx.get(f"{stack.url}/v1/code_interpreter/sessions", headers=A).json()["data"]
    assert session["status"] == "active"
    ran = httpx.post(
        f"{stack.url}/v1/code_interpreter/run",
        json={"session_id": session["id"], "code": "print(x)"},
        headers=A,
        timeout=60,
    )
    assert ran.json()["output"] == "still here\n"


def test_the_upstream_hanging_up_before_the_first_byte_is_a_502(stack: Stack) -> None:
    stack.upstream.push(Cut(completion("never"), chunks=0))
    with pytest.raises(openai.APIStatusError) as caught:
        stack.client().chat.completions.create(
            model="gpt-test+code", messages=[{"role": "user", "content": "go"}], stream=True
        )
    assert caught.value.status_code == 502
    assert caught.value.code == "upstream_unreachable"


# The database and the disk


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB ext4 filesystem of its own, mounted for the test (root only, like sandboxes)."""
    if os.geteuid() != 0:
        pytest.fail("this test needs root, as the local sandbox does")
    image, mount = tmp_path / "disk.img", tmp_path / "disk"
    with image.open("wb") as f:
        f.truncate(16 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)], check=True)
    mount.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
        image.unlink(missing_ok=True)


def fill(mount: Path) -> Path:
    """Use up every free block of the filesystem."""
    filler = mount / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1024 * 1024, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
                    os.fsync(fd)
    finally:
        os.close(fd)
    return filler


def rows(db: Path, table: str) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        count: int = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        return count


def blobs(stack: Stack) -> list[str]:
    root = stack.settings.data_dir / "blobs"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def upload(stack: Stack, content: bytes) -> httpx.Response:
    return httpx.post(
        f"{stack.url}/v1/files",
        files={"file": ("data.csv", io.BytesIO(content))},
        data={"purpose": "assistants"},
        headers=A,
        timeout=60,
    )


def assert_503(response: httpx.Response, code: str) -> None:
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == ("service_unavailable_error", code)


@contextlib.contextmanager
def read_only(db: Path) -> Iterator[None]:
    """Make the database refuse every write (even root's) while the service runs.

    The shared-memory index (`-shm`) stays writable: SQLite maps it into memory, and a page
    fault on an immutable mapping would kill the process instead of failing a write.
    """
    files = [str(p) for p in (db, Path(f"{db}-wal")) if p.exists()]
    subprocess.run(["chattr", "+i", *files], check=True)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", *files], check=True)


def test_a_read_only_database_is_a_503_and_leaves_nothing_half_done(stack: Stack) -> None:
    database = make_url(stack.settings.database).database
    assert database is not None
    db = Path(database)
    assert upload(stack, b"a,b\n1,2\n").status_code == 200
    before = blobs(stack)

    with read_only(db):
        refused = upload(stack, b"c,d\n3,4\n")
        assert_503(refused, "database_unavailable")
        # The bytes were stored before the row failed; they are gone again.
        assert blobs(stack) == before
        stack.upstream.push(
            completion(tool_calls=[code_call("open('/mnt/data/out.txt', 'w').write('x')")])
        )
        with pytest.raises(openai.InternalServerError) as caught:
            stack.client().chat.completions.create(
                model="gpt-test+code", messages=[{"role": "user", "content": "save a file"}]
            )
        assert caught.value.status_code == 503 and caught.value.code == "database_unavailable"
        assert blobs(stack) == before
        # Reading still works.
        assert len(stack.client().files.list().data) == 1

    assert upload(stack, b"e,f\n5,6\n").status_code == 200
    assert rows(db, "files") == 2 and len(blobs(stack)) == 2


def test_a_full_disk_is_a_503_and_leaves_nothing_half_done(
    make_stack: Any, small_disk: Path
) -> None:
    db = small_disk / "data" / "codeproxy.db"
    stack: Stack = make_stack(
        data_dir=small_disk / "data", database_url=f"sqlite+aiosqlite:///{db}"
    )
    assert upload(stack, b"a,b\n1,2\n").status_code == 200
    before = blobs(stack)

    filler = fill(small_disk)
    refused = upload(stack, b"x" * 200_000)
    assert_503(refused, "storage_unavailable")
    assert blobs(stack) == before  # no partial blob, and no temporary left behind
    assert rows(db, "files") == 1

    filler.unlink()
    assert upload(stack, b"x" * 200_000).status_code == 200
    assert rows(db, "files") == 2
