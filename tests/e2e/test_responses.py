"""The Responses API end to end: the unchanged OpenAI SDK as client, the real sandbox, a
scripted chat-completions upstream (the bridge; the native mode has its own tests)."""

from typing import Any

import httpx
import openai
import pytest

from proxy.jsonutil import loads
from tests.e2e.conftest import Stack
from tests.proxy.conftest import KEY_A, KEY_B
from tests.upstream import code_call, completion, tool_call

CI = [{"type": "code_interpreter", "container": {"type": "auto"}}]
OUTPUTS = ["code_interpreter_call.outputs"]


def test_one_round(stack: Stack) -> None:
    stack.upstream.push(
        completion(tool_calls=[code_call("print(6 * 7)")], prompt_tokens=30, completion_tokens=8),
        completion("6 times 7 is 42.", prompt_tokens=50, completion_tokens=7),
    )
    response = stack.client().responses.create(
        model="gpt-test", input="What is 6 times 7?", tools=CI, include=OUTPUTS
    )
    assert response.id.startswith("resp_")
    assert response.status == "completed"
    assert response.output_text == "6 times 7 is 42."
    call, message = response.output
    assert call.type == "code_interpreter_call"
    assert call.id.startswith("ci_") and call.container_id.startswith("cntr_")
    assert call.code == "print(6 * 7)" and call.status == "completed"
    assert [o.model_dump() for o in call.outputs or []] == [{"type": "logs", "logs": "42"}]
    assert message.type == "message" and message.id.startswith("msg_")
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (80, 15)
    assert response.usage.total_tokens == 95


def post(stack: Stack, body: dict[str, Any], key: str = KEY_A) -> httpx.Response:
    return httpx.post(
        f"{stack.url}/v1/responses",
        json=body,
        timeout=60,
        headers={"authorization": f"Bearer {key}"},
    )


def sse(raw: str) -> list[dict[str, Any]]:
    """The events of a Responses stream, checking OpenAI's framing on the way."""
    events = []
    for block in raw.split("\n\n"):
        if not block or block.startswith(":"):
            continue
        kind, data = block.split("\n")
        assert kind.startswith("event: ")
        event = loads(data.removeprefix("data: "))
        assert event["type"] == kind.removeprefix("event: ")
        events.append(event)
    return events


def test_outputs_only_when_included(stack: Stack) -> None:
    stack.upstream.push(completion(tool_calls=[code_call("print('hi')")]), completion("Said hi."))
    client = stack.client()
    response = client.responses.create(model="gpt-test", input="Say hi in code", tools=CI)
    call = response.output[0]
    assert call.type == "code_interpreter_call" and call.outputs is None
    assert client.responses.retrieve(response.id).output[0].outputs is None  # type: ignore[union-attr]
    again = client.responses.retrieve(response.id, include=OUTPUTS)
    assert [o.model_dump() for o in again.output[0].outputs or []] == [  # type: ignore[union-attr]
        {"type": "logs", "logs": "hi"}
    ]


def test_stream_events_order_and_framing(stack: Stack) -> None:
    stack.upstream.push(
        completion(
            "Let me run it.",
            tool_calls=[code_call("import time; time.sleep(0.7); print('done')")],
        ),
        completion("It printed done."),
    )
    response = post(stack, {"model": "gpt-test", "input": "Run it", "tools": CI, "stream": True})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    raw = response.text
    assert ": keepalive\n\n" in raw
    assert "[DONE]" not in raw
    events = sse(raw)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    kinds = [e["type"] for e in events]
    # Runs of deltas collapsed to one: how the text is cut depends on the upstream.
    collapsed = [k for i, k in enumerate(kinds) if not (i and k == kinds[i - 1] and "delta" in k)]
    assert collapsed == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.code_interpreter_call.in_progress",
        "response.code_interpreter_call_code.delta",
        "response.code_interpreter_call_code.done",
        "response.code_interpreter_call.interpreting",
        "response.code_interpreter_call.completed",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    indexes = [e["output_index"] for e in events if e["type"] == "response.output_item.added"]
    assert indexes == [0, 1, 2]
    created = events[0]["response"]
    assert created["status"] == "in_progress" and created["output"] == []
    final = events[-1]["response"]
    assert final["status"] == "completed"
    assert [item["type"] for item in final["output"]] == [
        "message",
        "code_interpreter_call",
        "message",
    ]
    assert final["usage"]["total_tokens"] == 30


def test_stream_helper_and_final_response(stack: Stack) -> None:
    stack.upstream.push(
        completion("First I compute.", tool_calls=[code_call("print(2 ** 10)")]),
        completion("2 to the 10th is 1024."),
    )
    with stack.client().responses.stream(
        model="gpt-test", input="2**10?", tools=CI, include=OUTPUTS
    ) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == "First I compute.2 to the 10th is 1024."
    assert final.output_text == "First I compute.2 to the 10th is 1024."
    call = final.output[1]
    assert call.type == "code_interpreter_call"
    assert [o.model_dump() for o in call.outputs or []] == [{"type": "logs", "logs": "1024"}]


def test_previous_response_continues_state_and_hidden_steps(stack: Stack) -> None:
    client = stack.client()
    stack.upstream.push(completion(tool_calls=[code_call("x = 40")]), completion("Set x."))
    first = client.responses.create(model="gpt-test", input="Set x to 40", tools=CI)
    stack.upstream.push(
        completion(tool_calls=[code_call("print(x + 2)")]), completion("x + 2 is 42.")
    )
    second = client.responses.create(
        model="gpt-test",
        input="Add 2 to x",
        tools=CI,
        previous_response_id=first.id,
        include=OUTPUTS,
    )
    assert second.previous_response_id == first.id
    assert second.output[0].container_id == first.output[0].container_id  # type: ignore[union-attr]
    assert second.output[0].outputs[0].logs == "42"  # type: ignore[union-attr,index]
    sent = stack.upstream.requests[2]["messages"]
    roles = [m["role"] for m in sent]
    assert roles == ["system", "user", "assistant", "tool", "assistant", "user"]
    assert sent[2]["tool_calls"][0]["function"]["name"] == "code_interpreter"
    assert sent[4]["content"] == "Set x." and sent[5]["content"] == "Add 2 to x"


def test_instructions_are_not_carried_over(stack: Stack) -> None:
    client = stack.client()
    stack.upstream.push(completion("Ahoy."), completion("Hello."))
    first = client.responses.create(
        model="gpt-test", input="Hi", tools=CI, instructions="Talk like a pirate."
    )
    client.responses.create(
        model="gpt-test", input="Again", tools=CI, previous_response_id=first.id
    )
    one, two = stack.upstream.requests
    assert one["messages"][0]["content"].startswith("Talk like a pirate.")
    assert "pirate" not in two["messages"][0]["content"]


def test_expired_container_is_replaced_with_its_files(make_stack: Any) -> None:
    stack = make_stack(executor={"session_idle_timeout": 1.0, "reaper_interval": 0.2})
    client = stack.client()
    stack.upstream.push(
        completion(tool_calls=[code_call("open('/mnt/data/keep.txt', 'w').write('kept'); y = 1")]),
        completion("Saved."),
    )
    first = client.responses.create(model="gpt-test", input="Save", tools=CI)
    old = first.output[0].container_id  # type: ignore[union-attr]
    import time

    time.sleep(1.6)
    assert client.containers.retrieve(old).status == "expired"
    stack.upstream.push(
        completion(tool_calls=[code_call("print(open('/mnt/data/keep.txt').read())")]),
        completion("Still there."),
    )
    second = client.responses.create(
        model="gpt-test", input="Read", tools=CI, previous_response_id=first.id, include=OUTPUTS
    )
    call = second.output[0]
    assert call.container_id != old  # type: ignore[union-attr]
    assert call.outputs[0].logs == "kept"  # type: ignore[union-attr,index]
    assert "has expired" in stack.upstream.requests[2]["messages"][0]["content"]
    new = client.containers.retrieve(call.container_id)  # type: ignore[union-attr]
    assert new.status == "running"


def test_function_call_round_trip(stack: Stack) -> None:
    weather = {
        "type": "function",
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    }
    client = stack.client()
    stack.upstream.push(
        completion(tool_calls=[tool_call("get_weather", '{"city": "Paris"}', "call_w1")])
    )
    first = client.responses.create(
        model="gpt-test", input="Weather in Paris?", tools=[weather, *CI]
    )
    [call] = first.output
    assert call.type == "function_call"
    assert (call.call_id, call.name, call.arguments) == (
        "call_w1",
        "get_weather",
        '{"city": "Paris"}',
    )
    assert call.id.startswith("fc_")
    sent_tools = stack.upstream.requests[0]["tools"]
    assert sent_tools[0] == {
        "type": "function",
        "function": {k: weather[k] for k in ("name", "description", "parameters")},
    }
    stack.upstream.push(completion("Sunny in Paris."))
    second = client.responses.create(
        model="gpt-test",
        previous_response_id=first.id,
        tools=[weather, *CI],
        input=[{"type": "function_call_output", "call_id": "call_w1", "output": "sunny"}],
    )
    assert second.output_text == "Sunny in Paris."
    sent = stack.upstream.requests[1]["messages"]
    assert sent[-2]["tool_calls"][0]["id"] == "call_w1"
    assert sent[-1] == {"role": "tool", "tool_call_id": "call_w1", "content": "sunny"}


def test_files_in_by_id_and_out_as_container_files(stack: Stack) -> None:
    client = stack.client()
    uploaded = client.files.create(
        file=("data.csv", b"item,value\napple,30\nbanana,70\n"), purpose="assistants"
    )
    code = (
        "import pandas as pd\n"
        "df = pd.read_csv('/mnt/data/data.csv')\n"
        "df.assign(double=df.value * 2).to_csv('/mnt/data/out.csv', index=False)\n"
        "print(df.value.sum())"
    )
    text = "The sum is 100: [Download out.csv](sandbox:/mnt/data/out.csv)"
    stack.upstream.push(completion(tool_calls=[code_call(code)]), completion(text))
    response = client.responses.create(
        model="gpt-test",
        input="Sum the values and save a copy",
        tools=[
            {"type": "code_interpreter", "container": {"type": "auto", "file_ids": [uploaded.id]}}
        ],
        include=OUTPUTS,
    )
    call, message = response.output
    assert call.outputs[0].logs == "100"  # type: ignore[union-attr,index]
    assert "/mnt/data/data.csv" in stack.upstream.requests[0]["messages"][0]["content"]
    [part] = message.content  # type: ignore[union-attr]
    assert part.text == text
    [citation] = part.annotations  # type: ignore[union-attr]
    assert citation.type == "container_file_citation"
    assert citation.file_id.startswith("cfile_") and citation.filename == "out.csv"
    assert text[citation.start_index : citation.end_index] == "sandbox:/mnt/data/out.csv"
    container = call.container_id  # type: ignore[union-attr]
    files = {f.path: f for f in client.containers.files.list(container)}
    assert files["/mnt/data/out.csv"].source == "assistant"
    assert files["/mnt/data/data.csv"].source == "user"
    assert files["/mnt/data/out.csv"].id == citation.file_id
    content = client.containers.files.content.retrieve(citation.file_id, container_id=container)
    assert content.read() == b"item,value,double\napple,30,60\nbanana,70,140\n"


def test_retrieve_input_items_and_delete(stack: Stack) -> None:
    client = stack.client()
    stack.upstream.push(completion("Hello there."))
    response = client.responses.create(
        model="gpt-test",
        input=[
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
        ],
        tools=CI,
        metadata={"k": "v"},
    )
    got = client.responses.retrieve(response.id)
    assert got.id == response.id and got.output_text == "Hello there."
    assert got.metadata == {"k": "v"}
    items = client.responses.input_items.list(response.id)
    assert [i.role for i in items.data] == ["user", "developer"]  # type: ignore[union-attr]
    assert all(i.id.startswith("msg_") for i in items.data)  # type: ignore[union-attr]
    asc = client.responses.input_items.list(response.id, order="asc", limit=1)
    assert [i.role for i in asc.data] == ["developer"] and asc.has_more  # type: ignore[union-attr]
    client.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)


def test_unstored_response_cannot_be_fetched(stack: Stack) -> None:
    stack.upstream.push(completion("Hi."))
    client = stack.client()
    response = client.responses.create(model="gpt-test", input="Hi", tools=CI, store=False)
    assert response.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)


def test_another_tenants_response_and_container_are_not_found(stack: Stack) -> None:
    stack.upstream.push(completion(tool_calls=[code_call("print(1)")]), completion("One."))
    mine = stack.client().responses.create(model="gpt-test", input="1", tools=CI)
    container = mine.output[0].container_id  # type: ignore[union-attr]
    theirs = stack.client(KEY_B)
    with pytest.raises(openai.NotFoundError):
        theirs.responses.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError):
        theirs.responses.input_items.list(mine.id)
    with pytest.raises(openai.NotFoundError):
        theirs.responses.delete(mine.id)
    with pytest.raises(openai.NotFoundError) as exc:
        theirs.responses.create(model="gpt-test", input="2", previous_response_id=mine.id)
    assert exc.value.body["param"] == "previous_response_id"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        theirs.responses.create(
            model="gpt-test",
            input="2",
            tools=[{"type": "code_interpreter", "container": container}],
        )
    with pytest.raises(openai.NotFoundError):
        theirs.containers.retrieve(container)
    assert container not in [c.id for c in theirs.containers.list()]
    assert len(stack.upstream.requests) == 2


BAD_INPUT: list[tuple[dict[str, Any], int, str]] = [
    ({"input": "hi"}, 400, "model"),
    ({"model": "m", "input": "hi", "frobnicate": 1}, 400, "frobnicate"),
    ({"model": "m", "input": "hi", "tools": [{"type": "web_search"}]}, 400, "tools[0].type"),
    ({"model": "m", "input": "hi", "tools": [{"type": "function"}]}, 400, "tools[0].name"),
    (
        {"model": "m", "input": "hi", "tools": [{"type": "code_interpreter", "container": 3}]},
        400,
        "tools[0].container",
    ),
    (
        {
            "model": "m",
            "input": "hi",
            "tools": [
                {
                    "type": "code_interpreter",
                    "container": {"type": "auto", "memory_limit": "2g"},
                }
            ],
        },
        400,
        "tools[0].container.memory_limit",
    ),
    (
        {
            "model": "m",
            "input": "hi",
            "tools": [{"type": "code_interpreter", "container": "cntr_nope"}],
        },
        404,
        "container_id",
    ),
    (
        {
            "model": "m",
            "input": "hi",
            "tools": [
                {
                    "type": "code_interpreter",
                    "container": {"type": "auto", "file_ids": ["file-nope"]},
                }
            ],
        },
        404,
        "file_id",
    ),
    (
        {"model": "m", "input": "hi", "tool_choice": {"type": "function", "name": "x"}},
        400,
        "tool_choice",
    ),
    ({"model": "m", "input": "hi", "background": True}, 400, "background"),
    (
        {"model": "m", "input": "hi", "include": ["message.output_text.logprobs"]},
        400,
        "include[0]",
    ),
    ({"model": "m", "input": [{"type": "item_reference", "id": "x"}]}, 400, "input[0].type"),
    ({"model": "m", "input": 5}, 400, "input"),
    (
        {"model": "m", "input": "hi", "previous_response_id": "resp_nope"},
        404,
        "previous_response_id",
    ),
]


def test_bad_input_is_a_clear_error(stack: Stack) -> None:
    # One server for every case: each is refused before any upstream call or sandbox use.
    for body, status, param in BAD_INPUT:
        response = post(stack, body)
        assert response.status_code == status, (body, response.text)
        error = response.json()["error"]
        assert error["param"] == param, (body, error)
        assert error["message"]
    assert stack.upstream.requests == []


def test_structured_output_and_options_reach_the_upstream(stack: Stack) -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "integer"}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    stack.upstream.push(completion('{"answer": 42}'))
    response = stack.client().responses.create(
        model="gpt-test",
        input="6*7?",
        tools=CI,
        text={
            "format": {"type": "json_schema", "name": "result", "schema": schema, "strict": True}
        },
        max_output_tokens=200,
        temperature=0.2,
        top_p=0.9,
        user="end-user-1",
    )
    assert response.output_text == '{"answer": 42}'
    sent = stack.upstream.requests[0]
    assert sent["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "result", "schema": schema, "strict": True},
    }
    assert (sent["max_completion_tokens"], sent["temperature"], sent["top_p"], sent["user"]) == (
        200,
        0.2,
        0.9,
        "end-user-1",
    )
    assert response.temperature == 0.2 and response.max_output_tokens == 200


def test_cut_short_by_max_output_tokens_is_incomplete(stack: Stack) -> None:
    cut = completion("Partial")
    cut["choices"][0]["finish_reason"] = "length"
    stack.upstream.push(cut)
    response = stack.client().responses.create(model="gpt-test", input="Long story", tools=CI)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"


def test_a_failure_mid_stream_is_an_error_event(stack: Stack) -> None:
    from tests.upstream import Error

    stack.upstream.push(
        completion(tool_calls=[code_call("print(1)")]),
        Error(
            500, {"error": {"message": "boom", "type": "server_error", "param": None, "code": "x"}}
        ),
    )
    response = post(stack, {"model": "gpt-test", "input": "go", "tools": CI, "stream": True})
    assert response.status_code == 200
    events = sse(response.text)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    error, failed = events[-2:]
    assert error["type"] == "error"
    assert error["message"] == "boom" and error["code"] == "x" and "param" in error, str(error)
    assert failed["type"] == "response.failed"
    assert failed["response"]["status"] == "failed"
    assert failed["response"]["error"] == {"code": "server_error", "message": "boom"}
    assert not any(e["type"] == "response.completed" for e in events)


def test_the_sdk_stream_helper_sees_a_failure_mid_stream(stack: Stack) -> None:
    from tests.upstream import Error

    stack.upstream.push(
        completion(tool_calls=[code_call("print(1)")]),
        Error(500, {"error": {"message": "boom", "type": "server_error", "param": None}}),
    )
    with stack.client().responses.stream(model="gpt-test", input="go", tools=CI) as stream:
        kinds = [event.type for event in stream]
        with pytest.raises(RuntimeError, match=r"response\.completed"):
            stream.get_final_response()
    assert kinds[-2:] == ["error", "response.failed"]


def test_an_upstream_error_before_streaming_keeps_its_status(stack: Stack) -> None:
    from tests.upstream import Error

    stack.upstream.push(
        Error(
            401,
            {
                "error": {
                    "message": "bad key",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "invalid_api_key",
                }
            },
        )
    )
    with pytest.raises(openai.AuthenticationError):
        stack.client().responses.create(model="gpt-test", input="hi", tools=CI, stream=True)


def test_without_the_interpreter_it_is_a_plain_response(stack: Stack) -> None:
    stack.upstream.push(completion("Just text."))
    response = stack.client().responses.create(model="gpt-test", input="Hi")
    assert response.output_text == "Just text."
    sent = stack.upstream.requests[0]
    assert "tools" not in sent and sent["messages"] == [{"role": "user", "content": "Hi"}]
