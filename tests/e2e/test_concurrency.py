"""Many clients at once: requests that wait for a sandbox get one as soon as one can be had."""

import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.conftest import Stack
from tests.proxy.conftest import KEY_A, KEY_B
from tests.upstream import code_call, completion

CI = [{"type": "code_interpreter"}]


def code_then_answer(body: dict[str, Any]) -> dict[str, Any]:
    """Run code that prints the request's token, then answer with what it printed."""
    last = body["messages"][-1]
    if last["role"] == "tool":
        return completion(f"It printed {last['content']}")
    token = re.search(r"token (\w+)", last["content"])
    assert token is not None
    return completion(tool_calls=[code_call(f"print('ran-' + {token[1]!r})")])


def test_waiting_requests_take_over_idle_sessions_of_their_tenant(make_stack: Any) -> None:
    # Each of 8 concurrent clients per tenant starts a new conversation, so a tenant holds
    # more sessions than its quota of 4: a waiting request must take over the least recently
    # used idle session instead of failing. The wait is long so that a slow machine cannot
    # fail the test; the old behaviour failed every waiter however long it waited.
    stack: Stack = make_stack(
        executor={"max_sandboxes": 16, "max_sandboxes_per_tenant": 4, "acquire_timeout": 60}
    )
    stack.upstream.fallback = code_then_answer
    clients = {key: stack.client(key, timeout=120) for key in (KEY_A, KEY_B)}

    def ask(n: int) -> str:
        client = clients[KEY_A if n % 2 else KEY_B]
        try:
            reply = client.chat.completions.create(
                model="gpt-test",
                messages=[{"role": "user", "content": f"Print token t{n}."}],
                tools=CI,  # type: ignore[list-item]
            )
        except openai.APIStatusError as exc:
            return f"HTTP {exc.status_code}: {exc.message}"
        return reply.choices[0].message.content or ""

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask, range(48)))

    failed = [a for a in answers if not a.startswith("It printed")]
    assert failed == [], f"{len(failed)} of 48 failed, first: {failed[0]}"
    assert answers == [f"It printed [stdout]\nran-t{n}\n" for n in range(48)]


def test_a_tenant_whose_sandboxes_are_all_busy_gets_429_with_retry_after(make_stack: Any) -> None:
    stack: Stack = make_stack(executor={"max_sandboxes_per_tenant": 1, "acquire_timeout": 0.5})
    headers = {"authorization": f"Bearer {KEY_A}"}
    api = f"{stack.url}/v1/code_interpreter"
    session = httpx.post(f"{api}/sessions", json={}, headers=headers).json()
    with ThreadPoolExecutor(1) as pool:
        busy = pool.submit(
            httpx.post,
            f"{api}/run",
            json={"session_id": session["id"], "code": "import time\ntime.sleep(120)"},
            headers=headers,
            timeout=120,
        )
        url = f"{api}/sessions/{session['id']}"
        while httpx.get(url, headers=headers).json()["status"] != "busy":
            time.sleep(0.05)
        refused = httpx.post(f"{api}/sessions", json={}, headers=headers)
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"] == {
            "message": refused.json()["error"]["message"],
            "type": "rate_limit_error",
            "param": None,
            "code": "rate_limit_exceeded",
        }
        stack.upstream.push(completion(tool_calls=[code_call("print(1)")]))
        with pytest.raises(openai.RateLimitError) as caught:
            stack.client().chat.completions.create(
                model="gpt-test", messages=[{"role": "user", "content": "run"}], tools=CI
            )
        assert caught.value.response.headers["retry-after"] == "1"
        # Another tenant is not held up.
        other = httpx.post(
            f"{api}/run",
            json={"code": "print(2)"},
            headers={"authorization": f"Bearer {KEY_B}"},
            timeout=60,
        )
        assert other.json()["output"] == "2\n"
        httpx.delete(url, headers=headers)  # stops the sleeping code
        assert busy.result().status_code == 404


def test_a_turn_whose_session_is_taken_over_between_runs_goes_on_in_a_new_one(
    make_stack: Any,
) -> None:
    stack: Stack = make_stack(
        executor={"max_sandboxes_per_tenant": 1, "acquire_timeout": 0, "pool_size": 0}
    )
    headers = {"authorization": f"Bearer {KEY_A}"}

    def take_over(body: dict[str, Any]) -> dict[str, Any]:
        # Between the turn's two runs another request of the tenant needs a sandbox: the
        # turn's idle session is the one it takes over.
        ran = httpx.post(
            f"{stack.url}/v1/code_interpreter/run", json={"code": "1"}, headers=headers, timeout=60
        )
        assert ran.status_code == 200, ran.text
        return completion(tool_calls=[code_call("print(open('/mnt/data/keep.txt').read())\nx")])

    stack.upstream.push(
        completion(tool_calls=[code_call("x = 1\nopen('/mnt/data/keep.txt', 'w').write('kept')")]),
        take_over,
        completion("Done."),
    )
    reply = stack.client().chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "go"}], tools=CI
    )
    assert reply.choices[0].message.content == "Done."
    first, second = reply.model_extra["code_interpreter"]["executions"]
    assert not first["state_lost"] and second["state_lost"]
    assert second["stdout"] == "kept\n"  # the turn's files were put back
    assert second["error"]["name"] == "NameError"  # its variables were not
    told = stack.upstream.requests[2]["messages"][-1]["content"]
    assert "variables and imports are gone" in told


def test_a_conversation_taken_over_mid_turn_gets_its_earlier_files_back(make_stack: Any) -> None:
    stack: Stack = make_stack(
        executor={"max_sandboxes_per_tenant": 1, "acquire_timeout": 0, "pool_size": 0}
    )
    headers = {"authorization": f"Bearer {KEY_A}"}

    def take_over(body: dict[str, Any]) -> dict[str, Any]:
        ran = httpx.post(
            f"{stack.url}/v1/code_interpreter/run", json={"code": "1"}, headers=headers, timeout=60
        )
        assert ran.status_code == 200, ran.text
        return completion(tool_calls=[code_call("print(open('/mnt/data/early.txt').read())")])

    stack.upstream.push(
        completion(tool_calls=[code_call("open('/mnt/data/early.txt', 'w').write('turn 1')")]),
        completion("Saved."),
        completion(tool_calls=[code_call("y = 2")]),
        take_over,
        completion("Done."),
    )
    turn1 = [{"role": "user", "content": "save a file"}]
    first = stack.client().chat.completions.create(model="gpt-test+code", messages=turn1)
    turn2 = [
        *turn1,
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "go on"},
    ]
    second = stack.client().chat.completions.create(model="gpt-test+code", messages=turn2)
    runs = second.model_extra["code_interpreter"]["executions"]
    assert [r["state_lost"] for r in runs] == [False, True]
    assert runs[1]["stdout"] == "turn 1\n"  # the file of the earlier turn was put back
