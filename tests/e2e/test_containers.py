"""The Containers API end to end with the OpenAI SDK: containers are executor sessions, shared
with the Responses API, chat completions and the direct code interpreter API."""

from typing import Any

import httpx
import openai
import pytest

from tests.e2e.conftest import Stack
from tests.proxy.conftest import KEY_A, KEY_B
from tests.upstream import code_call, completion


def run(stack: Stack, container: str, code: str) -> dict[str, Any]:
    response = httpx.post(
        f"{stack.url}/v1/code_interpreter/run",
        json={"code": code, "session_id": container},
        headers={"authorization": f"Bearer {KEY_A}"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def test_create_retrieve_list_delete(stack: Stack) -> None:
    client = stack.client()
    data = client.files.create(file=("numbers.txt", b"1 2 3"), purpose="assistants")
    made = client.containers.create(
        name="analysis",
        file_ids=[data.id],
        expires_after={"anchor": "last_active_at", "minutes": 5},
        memory_limit="1g",
    )
    assert made.id.startswith("cntr_") and made.object == "container"
    assert (made.name, made.status, made.memory_limit) == ("analysis", "running", "1g")
    assert made.expires_after is not None and made.expires_after.minutes == 5
    got = client.containers.retrieve(made.id)
    assert got.id == made.id and got.name == "analysis"
    assert run(stack, made.id, "print(open('/mnt/data/numbers.txt').read())")["output"] == "1 2 3\n"
    other = client.containers.create(name="scratch")
    assert [c.id for c in client.containers.list()] == [other.id, made.id]
    assert [c.id for c in client.containers.list(order="asc", limit=1).data] == [made.id]
    page = client.containers.list(limit=1)
    assert page.has_more and [c.id for c in page.data] == [other.id]
    assert [c.id for c in client.containers.list(after=other.id)] == [made.id]
    assert [c.id for c in client.containers.list(name="analysis")] == [made.id]
    client.containers.delete(made.id)
    with pytest.raises(openai.NotFoundError):
        client.containers.retrieve(made.id)
    gone = httpx.post(
        f"{stack.url}/v1/code_interpreter/run",
        json={"code": "1", "session_id": made.id},
        headers={"authorization": f"Bearer {KEY_A}"},
    )
    assert gone.status_code == 404


def test_container_files(stack: Stack) -> None:
    client = stack.client()
    container = client.containers.create(name="files")
    uploaded = client.containers.files.create(container.id, file=("notes.md", b"# Notes\n"))
    assert uploaded.id.startswith("cfile_") and uploaded.object == "container.file"
    assert (uploaded.path, uploaded.source, uploaded.bytes) == ("/mnt/data/notes.md", "user", 8)
    stored = client.files.create(file=("table.csv", b"a,b\n1,2\n"), purpose="assistants")
    copied = client.containers.files.create(container.id, file_id=stored.id)
    assert copied.path == "/mnt/data/table.csv"
    out = run(stack, container.id, "import os; print(sorted(os.listdir('/mnt/data')))")
    assert out["output"] == "['notes.md', 'table.csv']\n"
    run(stack, container.id, "open('/mnt/data/result.txt', 'w').write('written by code')")
    files = {f.path: f for f in client.containers.files.list(container.id)}
    assert set(files) == {"/mnt/data/notes.md", "/mnt/data/table.csv", "/mnt/data/result.txt"}
    written = files["/mnt/data/result.txt"]
    assert written.source == "assistant" and written.bytes == 15
    assert client.containers.files.retrieve(written.id, container_id=container.id).id == written.id
    content = client.containers.files.content.retrieve(written.id, container_id=container.id)
    assert content.read() == b"written by code"
    first = client.containers.files.list(container.id, limit=1, order="asc")
    assert [f.id for f in first.data] == [uploaded.id] and first.has_more
    client.containers.files.delete(uploaded.id, container_id=container.id)
    with pytest.raises(openai.NotFoundError):
        client.containers.files.retrieve(uploaded.id, container_id=container.id)
    out = run(stack, container.id, "import os; print(os.path.exists('/mnt/data/notes.md'))")
    assert out["output"] == "False\n"


def test_a_responses_container_is_a_container_and_chat_uses_it(stack: Stack) -> None:
    client = stack.client()
    container = client.containers.create(name="shared")
    stack.upstream.push(
        completion(tool_calls=[code_call("z = 5; open('/mnt/data/z.txt', 'w').write('5')")]),
        completion("Stored z."),
    )
    response = client.responses.create(
        model="gpt-test",
        input="Store z",
        tools=[{"type": "code_interpreter", "container": container.id}],
    )
    assert response.output[0].container_id == container.id  # type: ignore[union-attr]
    assert "/mnt/data/z.txt" in [f.path for f in client.containers.files.list(container.id)]
    stack.upstream.push(completion(tool_calls=[code_call("print(z * 2)")]), completion("Ten."))
    reply = client.chat.completions.create(
        model="gpt-test",
        messages=[{"role": "user", "content": "Double z"}],
        tools=[{"type": "code_interpreter", "container": container.id}],  # type: ignore[list-item]
    )
    [execution] = reply.model_extra["code_interpreter"]["executions"]  # type: ignore[index]
    assert execution["stdout"] == "10\n"
    # And an auto container of the Responses API is listed like any other.
    stack.upstream.push(completion(tool_calls=[code_call("1")]), completion("Done."))
    auto = client.responses.create(
        model="gpt-test",
        input="run",
        tools=[{"type": "code_interpreter", "container": {"type": "auto"}}],
    )
    made = auto.output[0].container_id  # type: ignore[union-attr]
    assert client.containers.retrieve(made).status == "running"
    assert made in [c.id for c in client.containers.list()]


def test_memory_limit_reaches_the_sandbox(make_stack: Any) -> None:
    stack = make_stack(executor={"memory_limit_mb": 256, "memory_limit_max_mb": 1024})
    client = stack.client()
    grab = "import numpy as np\nx = np.ones(500 * 2**20 // 8)\nprint(x.nbytes // 2**20)"
    roomy = client.containers.create(name="roomy", memory_limit="1g")
    assert run(stack, roomy.id, grab)["output"] == "500\n"
    tight = client.containers.create(name="tight")
    result = run(stack, tight.id, grab)
    assert result["error"] and "memory" in result["error"].lower()


def test_another_tenants_container_is_not_found(stack: Stack) -> None:
    mine = stack.client().containers.create(name="mine")
    file = stack.client().containers.files.create(mine.id, file=("a.txt", b"a"))
    theirs = stack.client(KEY_B)
    with pytest.raises(openai.NotFoundError):
        theirs.containers.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError):
        theirs.containers.delete(mine.id)
    with pytest.raises(openai.NotFoundError):
        theirs.containers.files.list(mine.id)
    with pytest.raises(openai.NotFoundError):
        theirs.containers.files.retrieve(file.id, container_id=mine.id)
    with pytest.raises(openai.NotFoundError):
        theirs.containers.files.content.retrieve(file.id, container_id=mine.id)
    with pytest.raises(openai.NotFoundError):
        theirs.containers.files.create(mine.id, file=("b.txt", b"b"))
    assert theirs.containers.list().data == []
    stored = theirs.files.create(file=("c.txt", b"c"), purpose="assistants")
    with pytest.raises(openai.NotFoundError):
        stack.client().containers.files.create(mine.id, file_id=stored.id)
    with pytest.raises(openai.NotFoundError):
        stack.client().containers.create(name="x", file_ids=[stored.id])


BAD_CONTAINERS: list[tuple[dict[str, Any], str]] = [
    ({}, "name"),
    ({"name": "x", "memory_limit": "2g"}, "memory_limit"),
    (
        {"name": "x", "expires_after": {"anchor": "created_at", "minutes": 5}},
        "expires_after.anchor",
    ),
    (
        {"name": "x", "expires_after": {"anchor": "last_active_at", "minutes": 0}},
        "expires_after.minutes",
    ),
    (
        {"name": "x", "network_policy": {"type": "allowlist", "allowed_domains": ["a.b"]}},
        "network_policy.type",
    ),
    ({"name": "x", "skills": []}, "skills"),
]


def test_bad_container_requests(stack: Stack) -> None:
    for body, param in BAD_CONTAINERS:
        response = httpx.post(
            f"{stack.url}/v1/containers", json=body, headers={"authorization": f"Bearer {KEY_A}"}
        )
        assert response.status_code == 400, (body, response.text)
        assert response.json()["error"]["param"] == param, body
    assert stack.client().containers.list().data == []
