"""The direct execution API (no model), tenancy of sessions and files, and leases."""

import io
import sqlite3
import time
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy.engine import make_url

from proxy.auth import static_tenant
from tests.e2e.conftest import Stack
from tests.proxy.conftest import KEY_A, KEY_B
from tests.upstream import code_call, completion

A = {"authorization": f"Bearer {KEY_A}"}
B = {"authorization": f"Bearer {KEY_B}"}


def post(stack: Stack, path: str, body: object, headers: dict[str, str] = A) -> httpx.Response:
    return httpx.post(
        f"{stack.url}/v1/code_interpreter{path}", json=body, headers=headers, timeout=60
    )


def test_seed_flow(stack: Stack) -> None:
    created = post(stack, "/sessions", {"language": "python"})
    assert created.status_code == 200, created.text
    session = created.json()
    assert session["id"].startswith("cntr_") and session["status"] == "active"
    assert session["expires_at"] > session["created_at"]

    first = post(stack, "/run", {"session_id": session["id"], "code": "x = 41\nprint('set')"})
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["execution_id"].startswith("exec_")
    assert (body["output"], body["error"], body["exit_code"]) == ("set\n", None, 0)
    assert body["session_id"] == session["id"] and body["duration_ms"] >= 0

    second = post(stack, "/run", {"session_id": session["id"], "code": "x + 1"}).json()
    assert second["results"][0]["data"]["text/plain"] == "42"

    listed = httpx.get(f"{stack.url}/v1/code_interpreter/sessions", headers=A).json()
    assert [s["id"] for s in listed["data"]] == [session["id"]]
    got = httpx.get(f"{stack.url}/v1/code_interpreter/sessions/{session['id']}", headers=A)
    assert got.json()["executions"] == 2

    deleted = httpx.delete(f"{stack.url}/v1/code_interpreter/sessions/{session['id']}", headers=A)
    assert deleted.json() == {
        "id": session["id"],
        "object": "code_interpreter.session.deleted",
        "deleted": True,
    }
    gone = post(stack, "/run", {"session_id": session["id"], "code": "print(x)"})
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "session_not_found"


def test_run_without_session_and_with_files(stack: Stack) -> None:
    client = stack.client()
    uploaded = client.files.create(
        file=("in.txt", io.BytesIO(b"from upload")), purpose="assistants"
    )
    response = post(
        stack,
        "/run",
        {
            "language": "bash",
            "code": "cat /mnt/data/notes/a.txt /mnt/data/in.txt; echo made > /mnt/data/out.txt",
            "files": {"notes/a.txt": "inline text "},
            "file_ids": [uploaded.id],
        },
    )
    body = response.json()
    assert body["output"] == "inline text from upload"
    assert body["exit_code"] == 0 and body["error"] is None
    assert body["session_id"].startswith("cntr_")
    [out] = [f for f in body["files"] if f["path"] == "/mnt/data/out.txt"]
    assert client.files.content(out["file_id"]).read() == b"made\n"


def test_run_reports_errors_and_exit_codes(stack: Stack) -> None:
    failed = post(stack, "/run", {"code": "raise ValueError('bad input')"}).json()
    assert failed["error"] == "ValueError: bad input" and failed["exit_code"] == 1
    assert any("ValueError" in line for line in failed["traceback"])
    compiled = post(stack, "/run", {"language": "c", "code": "int main() { return oops; }"})
    assert compiled.status_code == 200
    assert compiled.json()["exit_code"] != 0 and "oops" in compiled.json()["stderr"]
    exited = post(stack, "/run", {"language": "sh", "code": "echo bye >&2; exit 3"}).json()
    assert exited["exit_code"] == 3 and exited["error"] == "bye\n"


def test_bad_requests(stack: Stack) -> None:
    unknown = post(stack, "/run", {"code": "print(1)", "language": "cobol"})
    assert unknown.status_code == 400
    error = unknown.json()["error"]
    assert error["param"] == "language" and "python" in error["message"]
    assert post(stack, "/run", {"language": "python"}).json()["error"]["param"] == "code"
    wrong_type = post(stack, "/run", {"code": ["print(1)"]})
    assert wrong_type.status_code == 400 and wrong_type.json()["error"]["param"] == "code"
    too_long = post(stack, "/run", {"code": "print(1)", "timeout": 10_000})
    assert too_long.status_code == 400 and too_long.json()["error"]["param"] == "timeout"
    escape = post(stack, "/run", {"code": "print(1)", "files": {"../etc/x": "no"}})
    assert escape.status_code == 400 and escape.json()["error"]["param"] == "path"
    broken = httpx.post(
        f"{stack.url}/v1/code_interpreter/run",
        content=b"{not json",
        headers={**A, "content-type": "application/json"},
    )
    assert broken.status_code == 400 and broken.json()["error"]["code"] == "invalid_json"
    missing = post(stack, "/run", {"code": "1", "file_ids": ["file-nope"]})
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "file_id"


def test_tenants_cannot_use_each_others_sessions_or_files(stack: Stack) -> None:
    session = post(stack, "/sessions", {}).json()
    for response in (
        post(stack, "/run", {"session_id": session["id"], "code": "print(1)"}, B),
        httpx.get(f"{stack.url}/v1/code_interpreter/sessions/{session['id']}", headers=B),
        httpx.delete(f"{stack.url}/v1/code_interpreter/sessions/{session['id']}", headers=B),
    ):
        assert response.status_code == 404
    assert httpx.get(f"{stack.url}/v1/code_interpreter/sessions", headers=B).json()["data"] == []

    a_file = stack.client().files.create(file=("a.csv", io.BytesIO(b"1")), purpose="assistants")
    b_client = stack.client(KEY_B)
    with pytest.raises(openai.NotFoundError):
        b_client.chat.completions.create(
            model="gpt-test",
            messages=[{"role": "user", "content": "hi"}],
            tools=[
                {"type": "code_interpreter", "container": {"type": "auto", "file_ids": [a_file.id]}}
            ],
        )
    with pytest.raises(openai.NotFoundError):
        b_client.chat.completions.create(
            model="gpt-test",
            messages=[{"role": "user", "content": "hi"}],
            tools=[{"type": "code_interpreter", "container": session["id"]}],
        )
    assert stack.upstream.requests == []  # refused before the model was called
    # A's session still works for A.
    assert (
        post(stack, "/run", {"session_id": session["id"], "code": "print(2)"}).json()["output"]
        == "2\n"
    )


def test_chat_reuses_a_named_container(stack: Stack) -> None:
    session = post(stack, "/sessions", {}).json()
    post(stack, "/run", {"session_id": session["id"], "code": "secret = 'kept'"})
    stack.upstream.push(completion(tool_calls=[code_call("print(secret)")]), completion("kept"))
    reply = stack.client().chat.completions.create(
        model="gpt-test",
        messages=[{"role": "user", "content": "hi"}],
        tools=[{"type": "code_interpreter", "container": session["id"]}],
    )
    assert reply.model_extra["code_interpreter"]["container_id"] == session["id"]
    assert reply.model_extra["code_interpreter"]["executions"][0]["stdout"] == "kept\n"


def test_disconnect_mid_stream_releases_the_lease(stack: Stack) -> None:
    session = post(stack, "/sessions", {}).json()
    stack.upstream.push(completion(tool_calls=[code_call("import time\ntime.sleep(60)")]))
    body = {
        "model": "gpt-test",
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "code_interpreter", "container": session["id"]}],
        "stream": True,
    }
    with httpx.stream(
        "POST", f"{stack.url}/v1/chat/completions", json=body, headers=A, timeout=60
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith(": keepalive"):
                break  # the code is running now; hang up
    url = f"{stack.url}/v1/code_interpreter/sessions/{session['id']}"
    deadline = time.monotonic() + 10
    while httpx.get(url, headers=A).json()["status"] == "busy":
        assert time.monotonic() < deadline, "the session stayed leased after the disconnect"
        time.sleep(0.05)
    started = time.monotonic()
    after = post(stack, "/run", {"session_id": session["id"], "code": "print('free')"}).json()
    assert after["output"] == "free\n"
    assert time.monotonic() - started < 5
    assert len(stack.upstream.requests) == 1  # the loop stopped: no further upstream call


def test_executions_are_recorded_for_audit(stack: Stack) -> None:
    post(stack, "/run", {"code": "print('audited')"})
    post(stack, "/run", {"language": "bash", "code": "exit 4"})
    stack.upstream.push(completion(tool_calls=[code_call("1 / 0")]), completion("Oops."))
    stack.client().chat.completions.create(
        model="gpt-test",
        messages=[{"role": "user", "content": "hi"}],
        tools=[{"type": "code_interpreter"}],
    )
    rows = audit_rows(stack)
    assert [(r["source"], r["language"], r["status"]) for r in rows] == [
        ("run", "python", "ok"),
        ("run", "bash", "error"),
        ("chat", "python", "error"),
    ]
    assert rows[0]["tenant"] == static_tenant(KEY_A)
    assert rows[0]["code"] == "print('audited')" and "audited" in rows[0]["output"]
    assert all(r["duration_ms"] >= 0 and r["created_at"] > 0 for r in rows)


def test_without_retention_code_and_output_are_not_kept(make_stack: Any) -> None:
    stack = make_stack(execution_retention_days=0)
    post(stack, "/run", {"code": "print('secret')"})
    [row] = audit_rows(stack)
    assert row["status"] == "ok" and row["code"] is None and row["output"] is None


def audit_rows(stack: Stack) -> list[dict[str, Any]]:
    database = make_url(stack.settings.database).database
    assert database is not None
    with sqlite3.connect(database) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM executions ORDER BY created_at, rowid")]
