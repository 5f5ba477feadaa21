"""What a client or sandboxed code can make the service store or hold: blobs amplified by
sparse files, unbounded code and audit rows, strings that cannot be encoded, huge headers."""

import io
import json
import sqlite3
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy.engine import make_url

from tests.e2e.conftest import Stack
from tests.proxy.conftest import KEY_A
from tests.upstream import ScriptedUpstream, code_call, completion

A = {"authorization": f"Bearer {KEY_A}"}
MIB = 1024 * 1024


def run(stack: Stack, body: Any) -> httpx.Response:
    return httpx.post(f"{stack.url}/v1/code_interpreter/run", headers=A, json=body, timeout=120)


def blob_bytes(stack: Stack) -> int:
    """Bytes in the proxy's blob store on disk."""
    root = stack.settings.data_dir / "blobs"
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


# Sparse files: a few KB of /mnt/data that read as hundreds of MB.

SPARSE = """
for name in ('a.bin', 'b.bin', 'c.bin'):
    with open(f'/mnt/data/{name}', 'wb') as f:
        f.write(b'x' * 4096)
        f.truncate(200 * 2**20)
print('ok')
"""


def test_sparse_files_do_not_amplify_into_the_blob_store(
    make_stack: Any,
) -> None:
    stack: Stack = make_stack(max_export_bytes=16 * MIB)
    response = run(stack, {"code": SPARSE})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["output"] == "ok\n"
    assert body["files"] == []
    skipped = {f["path"]: f for f in body["skipped_files"]}
    assert set(skipped) == {f"/mnt/data/{n}" for n in ("a.bin", "b.bin", "c.bin")}
    assert all(f["reason"] == "export_limit" for f in skipped.values())
    assert blob_bytes(stack) < 16 * MIB


def test_outputs_share_the_export_budget_of_one_execution(make_stack: Any) -> None:
    stack: Stack = make_stack(max_export_bytes=3 * MIB)
    code = "for i in range(5):\n    open(f'/mnt/data/{i}.bin', 'wb').write(b'y' * 2**20)"
    body = run(stack, {"code": code}).json()
    assert len(body["files"]) == 3 and len(body["skipped_files"]) == 2
    assert sum(f["bytes"] for f in body["files"]) <= 3 * MIB
    assert blob_bytes(stack) <= 3 * MIB


def test_the_model_is_told_which_outputs_were_not_stored(
    make_stack: Any, upstream: ScriptedUpstream
) -> None:
    stack: Stack = make_stack(max_export_bytes=MIB)
    code = "open('/mnt/data/big.bin', 'wb').truncate(2**30)\nopen('/mnt/data/small.txt', 'w')"
    upstream.push(completion(tool_calls=[code_call(code)]), completion("Done."))
    reply = stack.client().chat.completions.create(
        model="gpt-test",
        messages=[{"role": "user", "content": "run"}],
        tools=[{"type": "code_interpreter"}],
    )
    [execution] = (reply.model_extra or {})["code_interpreter"]["executions"]
    assert [f["path"] for f in execution["files"]] == ["/mnt/data/small.txt"]
    assert [f["reason"] for f in execution["skipped_files"]] == ["export_limit"]
    tool = upstream.requests[1]["messages"][-1]["content"]
    assert "[files NOT saved for the user]" in tool
    assert "/mnt/data/big.bin (1073741824 bytes): over the export limit" in tool
    assert blob_bytes(stack) < MIB


def test_a_tenant_storage_quota_covers_uploads_and_outputs(make_stack: Any) -> None:
    stack: Stack = make_stack(storage_quota_bytes=2 * MIB)
    client = stack.client()
    client.files.create(file=("one.bin", io.BytesIO(b"1" * MIB)), purpose="assistants")
    with pytest.raises(openai.APIStatusError) as refused:
        client.files.create(file=("two.bin", io.BytesIO(b"2" * (MIB + 1))), purpose="assistants")
    assert refused.value.status_code == 413
    error = refused.value.body
    assert isinstance(error, dict) and error["code"] == "insufficient_quota"
    # Code output past the quota is not stored; the run itself succeeds and says so.
    body = run(stack, {"code": "open('/mnt/data/out.bin', 'wb').write(b'z' * 2**21)"}).json()
    assert body["files"] == []
    assert [(f["path"], f["reason"]) for f in body["skipped_files"]] == [
        ("/mnt/data/out.bin", "storage_quota")
    ]
    # Deleting frees the quota again.
    [first] = client.files.list().data
    client.files.delete(first.id)
    client.files.create(file=("two.bin", io.BytesIO(b"2" * (MIB + 1))), purpose="assistants")


# Code: bounded, and stored truncated.


def test_oversized_code_is_refused_before_anything_runs(make_stack: Any) -> None:
    stack: Stack = make_stack(max_code_bytes=64 * 1024)
    response = run(stack, {"code": "x = 1\n" + "#" * (64 * 1024)})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "code" and "65536" in error["message"]
    sessions = httpx.get(f"{stack.url}/v1/code_interpreter/sessions", headers=A).json()
    assert sessions["data"] == []


def test_audit_rows_keep_a_bounded_copy_of_the_code(stack: Stack) -> None:
    code = "x = 1\n" + "# padding\n" * 50_000  # 500 KB, under the limit
    assert run(stack, {"code": code}).status_code == 200
    db = sqlite3.connect(make_url(stack.settings.database).database or "")
    try:
        [(stored,)] = db.execute("SELECT code FROM executions").fetchall()
    finally:
        db.close()
    assert len(stored) < 70_000 and stored.startswith("x = 1\n")


def test_an_oversized_call_of_the_model_becomes_a_tool_error(
    make_stack: Any, upstream: ScriptedUpstream
) -> None:
    stack: Stack = make_stack(max_code_bytes=1024)
    upstream.push(
        completion(tool_calls=[code_call("print(1)\n" + "#" * 2000)]),
        completion("Too long, sorry."),
    )
    reply = stack.client().chat.completions.create(
        model="gpt-test",
        messages=[{"role": "user", "content": "run"}],
        tools=[{"type": "code_interpreter"}],
    )
    assert reply.choices[0].message.content == "Too long, sorry."
    tool = upstream.requests[1]["messages"][-1]
    assert tool["role"] == "tool" and "1024" in tool["content"] and "[error]" in tool["content"]


# Strings that cannot be encoded.


@pytest.mark.parametrize(
    "body,param",
    [
        ({"code": "print('\ud800')"}, "code"),
        ({"code": "print(1)", "files": {"a.txt": "bad \udcff"}}, "files.a.txt"),
        ({"code": "print(1)", "files": {"b\ud800.txt": "fine"}}, "files"),
    ],
    ids=["code", "file-content", "file-name"],
)
def test_lone_surrogates_are_a_400_naming_the_field(
    stack: Stack, body: dict[str, Any], param: str
) -> None:
    # json.dumps escapes lone surrogates as \\udXXX, as a careless client would send them.
    response = httpx.post(
        f"{stack.url}/v1/code_interpreter/run",
        content=json.dumps(body),
        headers={**A, "content-type": "application/json"},
        timeout=60,
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_names_and_output_that_are_not_utf8_are_not_a_500(stack: Stack) -> None:
    code = (
        "import os, sys\n"
        "open(b'/mnt/data/caf\\xe9.txt', 'wb').write(b'latin-1 name')\n"
        "open('/mnt/data/fine.txt', 'w').write('ok')\n"
        "print('escaped \\udcff surrogate', flush=True)\n"
        "print('lone \\ud800 surrogate', flush=True)\n"
        "print('after')\n"
    )
    response = run(stack, {"code": code})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [f["path"] for f in body["files"]] == ["/mnt/data/fine.txt"]
    assert [(f["path"], f["reason"]) for f in body["skipped_files"]] == [
        ("/mnt/data/caf\ufffd.txt", "invalid_name")
    ]
    assert "escaped" in body["output"] and "after" in body["output"]
    listed = httpx.get(f"{stack.url}/v1/code_interpreter/sessions/{body['session_id']}", headers=A)
    assert listed.status_code == 200
