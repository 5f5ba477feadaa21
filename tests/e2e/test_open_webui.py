"""The README's Open WebUI recipe, replayed: what Open WebUI sends for several users and chats,
through the real server and sandbox, with codeproxy and Open WebUI set up as the README says."""

import json
import re
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from proxy.jsonutil import loads
from tests.e2e.conftest import REPO, Stack
from tests.e2e.openwebui import OpenWebUI, User, chat_body, task_body
from tests.upstream import code_call, completion

CHAT_MODEL = "gpt-4o+code"


def recipe(name: str) -> dict[str, str]:
    """The KEY=VALUE lines of the README's block marked `<!-- recipe: name -->`."""
    readme = (REPO / "README.md").read_text()
    block = re.search(rf"<!-- recipe: {name} -->\n```sh\n(.*?)```", readme, re.S)
    assert block is not None, f"README has no {name} recipe"
    return dict(line.split("=", 1) for line in block[1].splitlines() if line.strip())


def model_script(body: dict[str, Any]) -> dict[str, Any]:
    """A model that runs the code a user message asks for, and answers background tasks."""
    last = body["messages"][-1]
    if last["role"] == "tool":
        return completion(f"Ran it: {last['content']}")
    text = last["content"]
    if text.startswith("### Task:"):
        if "concise title" in text:
            return completion('{ "title": "Variables" }')
        if "tags" in text:
            return completion('{ "tags": ["Technology"] }')
        return completion('{ "follow_ups": ["And then?"] }')
    return completion(tool_calls=[code_call(text.removeprefix("run: "))])


def chat(stack: Stack, app: OpenWebUI, user: User, chat_id: str, messages: list[Any]) -> str:
    """One streamed chat turn as Open WebUI sends it; the visible reply."""
    body = chat_body(CHAT_MODEL, messages)
    headers = app.headers(user, chat_id)
    text = ""
    with httpx.stream(
        "POST", f"{stack.url}/v1/chat/completions", json=body, headers=headers, timeout=60
    ) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("data: {"):
                for choice in loads(line[6:])["choices"]:
                    text += choice["delta"].get("content") or ""
    return text


def turn(
    stack: Stack, app: OpenWebUI, user: User, chat_id: str, history: list[Any], ask: str
) -> str:
    history.append({"role": "user", "content": ask})
    reply = chat(stack, app, user, chat_id, history)
    history.append({"role": "assistant", "content": reply})
    return reply


def executor_health(stack: Stack) -> dict[str, Any]:
    health: dict[str, Any] = httpx.get(f"{stack.url}/ready").json()["executor"]
    return health


@pytest.fixture
def setup(make_stack: Any) -> tuple[Stack, OpenWebUI, str]:
    ours, theirs = recipe("codeproxy"), recipe("open-webui")
    # The two halves of the recipe agree with each other.
    assert theirs["OPENAI_API_KEY"] in ours["CODEPROXY_API_KEYS"].split(",")
    assert theirs["FORWARD_USER_INFO_HEADER_JWT_SECRET"] == ours["CODEPROXY_USER_JWT_SECRET"]
    assert theirs["ENABLE_FORWARD_USER_INFO_HEADERS"] == "true"
    assert theirs["OPENAI_API_BASE_URL"].endswith("/v1")
    task_model = theirs["TASK_MODEL_EXTERNAL"]
    assert not task_model.endswith("+code")
    stack: Stack = make_stack(
        executor={"pool_size": 0, "max_sandboxes_per_user": 2},
        api_keys=[SecretStr(k) for k in ours["CODEPROXY_API_KEYS"].split(",")],
        user_jwt_secret=SecretStr(ours["CODEPROXY_USER_JWT_SECRET"]),
    )
    stack.upstream.models = ["gpt-4o", task_model]
    stack.upstream.fallback = model_script
    app = OpenWebUI(
        api_key=theirs["OPENAI_API_KEY"], jwt_secret=theirs["FORWARD_USER_INFO_HEADER_JWT_SECRET"]
    )
    return stack, app, task_model


def test_users_chats_and_background_tasks(setup: tuple[Stack, OpenWebUI, str]) -> None:
    stack, app, task_model = setup
    key = {"Authorization": f"Bearer {app.api_key}"}
    models = [m["id"] for m in httpx.get(f"{stack.url}/v1/models", headers=key).json()["data"]]
    assert CHAT_MODEL in models and task_model in models

    alice, bob = User("Alice", "alice@example.com"), User("Bob", "bob@example.com")
    bobs: list[Any] = []
    turn(stack, app, bob, "chat-b1", bobs, "run: b = 'bob'")
    first: list[Any] = []
    turn(stack, app, alice, "chat-a1", first, "run: x = 'alice-1'")

    # Background requests after a reply, to the plain task model and, as an app without a
    # task model sends them, to the chat's own +code model: none starts a sandbox.
    before = executor_health(stack)
    for model in (task_model, CHAT_MODEL):
        for task in ("title", "tags", "follow_ups"):
            response = httpx.post(
                f"{stack.url}/v1/chat/completions",
                json=task_body(task, model, first),
                headers=app.headers(alice, "chat-a1"),
                timeout=60,
            )
            assert response.status_code == 200, response.text
            json.loads(response.json()["choices"][0]["message"]["content"])  # the bare JSON
    after = executor_health(stack)
    assert (after["sessions"], after["sandboxes"]) == (before["sessions"], before["sandboxes"])
    assert (before["sessions"], before["evicted"]) == (2, 0)
    sent = stack.upstream.requests[-6:]
    assert ["tools" in r for r in sent] == [False] * 3 + [True] * 3

    # Alice opens two more chats: her quota is 2, so her longest-idle chat loses its sandbox;
    # Bob's, idle for longer, is not touched.
    turn(stack, app, alice, "chat-a2", [], "run: y = 'alice-2'")
    third: list[Any] = []
    turn(stack, app, alice, "chat-a3", third, "run: z = 'alice-3'")
    assert executor_health(stack)["evicted"] == 1

    reply = turn(stack, app, alice, "chat-a1", first, "run: print(x)")
    assert "NameError" in reply
    note = stack.upstream.requests[-2]["messages"][0]["content"]
    assert "was evicted to make room for newer sessions" in note
    assert "print(x)" in stack.upstream.requests[-2]["messages"][-1]["content"]
    assert "'bob'" in turn(stack, app, bob, "chat-b1", bobs, "run: print(repr(b))")

    # An edited question in the same chat keeps the chat's sandbox.
    third[0] = {"role": "user", "content": "run: z = 'alice-3'  # edited"}
    assert "alice-3" in turn(stack, app, alice, "chat-a3", third[:1], "run: print(z)")


def test_a_bad_user_token_is_refused(setup: tuple[Stack, OpenWebUI, str]) -> None:
    stack, app, _ = setup
    forged = OpenWebUI(api_key=app.api_key, jwt_secret="not-the-shared-secret")
    response = httpx.post(
        f"{stack.url}/v1/chat/completions",
        json=chat_body(CHAT_MODEL, [{"role": "user", "content": "run: 1"}]),
        headers=forged.headers(User("Mallory", "m@example.com"), "chat-m"),
    )
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["code"] == "invalid_user_token" and "X-OpenWebUI-User-Jwt" in error["message"]
    assert stack.upstream.requests == []


def test_plain_user_headers_and_the_user_field_also_count_per_user(make_stack: Any) -> None:
    stack: Stack = make_stack(executor={"pool_size": 0, "max_sandboxes_per_user": 1})
    stack.upstream.fallback = model_script
    app = OpenWebUI(api_key="sk-test-tenant-a")  # no secret: plain X-OpenWebUI-User-* headers
    carol, dave = User("Carol", "c@example.com"), User("Dave", "d@example.com")
    daves: list[Any] = []
    turn(stack, app, dave, "chat-d", daves, "run: v = 'dave'")
    turn(stack, app, carol, "chat-c1", [], "run: v = 'carol-1'")
    turn(stack, app, carol, "chat-c2", [], "run: v = 'carol-2'")
    # An SDK client naming its users in OpenAI's `user` field.
    client = stack.client()
    for n in (1, 2):
        client.chat.completions.create(
            model="gpt-test+code",
            messages=[{"role": "user", "content": f"run: v = 'erin-{n}'"}],
            user="erin",
        )
    health = executor_health(stack)
    # Carol's and Erin's second chats each took over their own first one, not Dave's.
    assert (health["sessions"], health["evicted"]) == (3, 2)
    assert "'dave'" in turn(stack, app, dave, "chat-d", daves, "run: print(repr(v))")
