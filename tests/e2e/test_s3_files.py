"""Files on an S3-compatible store (moto's server on loopback) with PostgreSQL: the Files API,
files the code writes, nothing left by a failed upload, and a 100 MB upload that streams
through the service with flat memory."""

import hashlib
import io
import itertools
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.conftest import REPO, Stack
from tests.e2e.test_two_services import free_port
from tests.proxy.conftest import KEY_A
from tests.s3server import S3Server
from tests.servers import wait_until_up
from tests.upstream import code_call, completion

MIB = 1024 * 1024
AUTH = {"authorization": f"Bearer {KEY_A}"}
_buckets = itertools.count(1)


@pytest.fixture
def bucket(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    name = f"files-{os.getpid()}-{next(_buckets)}"
    s3_server.create_bucket(name)
    return name


@pytest.fixture
def s3_stack(make_stack: Callable[..., Stack], s3_server: S3Server, bucket: str) -> Stack:
    return make_stack(blob_url=f"s3://{bucket}/files", s3_endpoint_url=s3_server.endpoint)


def stored(s3_server: S3Server, bucket: str) -> tuple[list[str], list[str]]:
    """(objects, unfinished multipart uploads) in the bucket."""
    client = s3_server.client()
    objects = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    uploads = [u["Key"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]
    return objects, uploads


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_files_api_and_code_outputs_on_s3(
    s3_stack: Stack, s3_server: S3Server, bucket: str
) -> None:
    client = s3_stack.client()
    payload = b"a,b\n1,2\n" * 5000
    created = client.files.create(file=("data.csv", io.BytesIO(payload)), purpose="assistants")
    assert stored(s3_server, bucket) == ([f"files/{created.id}"], [])
    assert client.files.content(created.id).read() == payload

    s3_stack.upstream.push(
        completion(
            tool_calls=[
                code_call("import shutil\nshutil.copy('/mnt/data/data.csv', '/mnt/data/copy.csv')")
            ]
        ),
        completion("Copied."),
    )
    reply = client.chat.completions.create(
        model="gpt-test",
        messages=[{"role": "user", "content": "copy it"}],
        tools=[
            {"type": "code_interpreter", "container": {"type": "auto", "file_ids": [created.id]}}
        ],
    )
    [execution] = reply.model_extra["code_interpreter"]["executions"]  # type: ignore[index]
    [output] = execution["files"]
    assert client.files.content(output["file_id"]).read() == payload
    assert sorted(stored(s3_server, bucket)[0]) == sorted(
        [f"files/{created.id}", f"files/{output['file_id']}"]
    )
    client.files.delete(created.id)
    client.files.delete(output["file_id"])
    assert stored(s3_server, bucket) == ([], [])


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_failed_uploads_leave_no_row_and_no_object(
    make_stack: Callable[..., Stack], s3_server: S3Server, bucket: str
) -> None:
    stack = make_stack(
        blob_url=f"s3://{bucket}/files",
        s3_endpoint_url=s3_server.endpoint,
        max_upload_bytes=12 * MIB,
    )
    client = stack.client()
    with pytest.raises(openai.APIStatusError) as too_large:
        client.files.create(file=("big.bin", io.BytesIO(b"x" * 20 * MIB)), purpose="assistants")
    assert too_large.value.status_code == 413
    # The purpose is checked after the file part was stored: that object is taken back.
    bad = httpx.post(
        f"{stack.url}/v1/files",
        headers=AUTH,
        files={"file": ("a.bin", b"y" * (10 * MIB))},
        data={"purpose": "nonsense"},
        timeout=60,
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "purpose"
    assert list(client.files.list()) == []
    assert stored(s3_server, bucket) == ([], [])


def test_an_unavailable_store_is_a_503_and_counted(
    make_stack: Callable[..., Stack], s3_server: S3Server, bucket: str
) -> None:
    stack = make_stack(blob_url="s3://no-such-bucket/files", s3_endpoint_url=s3_server.endpoint)
    response = httpx.post(
        f"{stack.url}/v1/files",
        headers=AUTH,
        files={"file": ("a.txt", b"data")},
        data={"purpose": "assistants"},
    )
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "storage_unavailable"
    metrics = httpx.get(f"{stack.url}/metrics").text
    assert 'codeproxy_blob_errors_total{operation="put"} 1.0' in metrics
    assert list(stack.client().files.list()) == []


def vm_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


@pytest.fixture
def s3_server_process(
    tmp_path: Path, s3_server: S3Server, bucket: str, postgres: Any
) -> Iterator[tuple[str, int]]:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CODEPROXY_")},
        **s3_server.env,
        "CODEPROXY_PORT": str(port),
        "CODEPROXY_DATA_DIR": str(tmp_path / "data"),
        "CODEPROXY_DATABASE_URL": postgres.create_database(),
        "CODEPROXY_BLOB_URL": f"s3://{bucket}/big",
        "CODEPROXY_S3_ENDPOINT_URL": s3_server.endpoint,
        "CODEPROXY_API_KEYS": KEY_A,
        "CODEPROXY_POOL_SIZE": "0",
        "CODEPROXY_SANDBOX_VENV": str(REPO / ".sandbox-venv"),
        "CODEPROXY_LOG_LEVEL": "warning",
    }
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "codeproxy.cli", "serve"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(proc, url, log)
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(30)


def test_a_100_mb_upload_streams_with_flat_memory(
    s3_server_process: tuple[str, int], s3_server: S3Server, bucket: str
) -> None:
    url, pid = s3_server_process
    size = 100 * MIB
    block = hashlib.sha256(b"seed").digest() * (MIB // 32)  # 1 MiB, not compressible to nothing
    boundary = "codeproxy-test-boundary"

    def form(blocks: int) -> Iterator[bytes]:
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n'
            f'assistants\r\n--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="big.bin"\r\nContent-Type: application/octet-stream\r\n\r\n'
        ).encode()
        for _ in range(blocks):
            yield block
        yield f"\r\n--{boundary}--\r\n".encode()

    headers = {**AUTH, "content-type": f"multipart/form-data; boundary={boundary}"}
    with httpx.Client(timeout=300) as http:
        # Warm up: the first upload loads what the path needs.
        warm = http.post(f"{url}/v1/files", headers=headers, content=form(2))
        assert warm.status_code == 200, warm.text
        baseline = vm_kib(pid, "VmHWM")
        created = http.post(f"{url}/v1/files", headers=headers, content=form(size // MIB))
        assert created.status_code == 200, created.text
        grown = (vm_kib(pid, "VmHWM") - baseline) / 1024
        assert created.json()["bytes"] == size
        file_id = created.json()["id"]
        digest = hashlib.sha256()
        with http.stream("GET", f"{url}/v1/files/{file_id}/content", headers=AUTH) as response:
            assert response.status_code == 200
            for chunk in response.iter_bytes():
                digest.update(chunk)
        grown_after_download = (vm_kib(pid, "VmHWM") - baseline) / 1024
    expected = hashlib.sha256()
    for _ in range(size // MIB):
        expected.update(block)
    assert digest.hexdigest() == expected.hexdigest()
    head = s3_server.client().head_object(Bucket=bucket, Key=f"big/{file_id}")
    assert head["ContentLength"] == size
    # Parts of 8 MiB, two in flight: far below the 100 MB that went through.
    assert grown < 40, f"peak memory grew by {grown:.0f} MiB during the upload"
    assert grown_after_download < 40, f"peak memory grew by {grown_after_download:.0f} MiB"
