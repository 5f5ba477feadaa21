"""Many clients at once: requests that wait for a sandbox get one as soon as one can be had."""

import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai

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
