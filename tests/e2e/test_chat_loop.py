"""Chat completions with the server-side interpreter, end to end: the OpenAI SDK as client,
the real sandbox, a scripted upstream for multi-round loops."""

import io
from typing import Any

import httpx
import openai
import pytest

from proxy.jsonutil import loads
from tests.conftest import DATABASES
from tests.e2e.conftest import Stack
from tests.proxy.conftest import KEY_A
from tests.upstream import Error, code_call, completion, tool_call

pytestmark = pytest.mark.parametrize("database_url", DATABASES, indirect=True)

CI = [{"type": "code_interpreter"}]
USER = [{"role": "user", "content": "What is 6 times 7?"}]


def sse_events(raw: str) -> list[Any]:
    """Parse raw SSE text into its data payloads, checking OpenAI's framing on the way."""
    events: list[Any] = []
    for block in raw.split("\n\n"):
        if not block or block.startswith(":"):
            continue
        assert block.startswith("data: "), block
        assert "\nevent:" not in block and not block.startswith("event:")
        payload = block[len("data: ") :]
        events.append(payload if payload == "[DONE]" else loads(payload))
    return events


def test_one_round(stack: Stack) -> None:
    stack.upstream.push(
        completion(tool_calls=[code_call("print(6 * 7)")], prompt_tokens=30, completion_tokens=8),
        completion("6 times 7 is 42.", prompt_tokens=50, completion_tokens=7),
    )
    reply = stack.client().chat.completions.create(model="gpt-test", messages=USER, tools=CI)
    assert reply.choices[0].message.content == "6 times 7 is 42."
    assert reply.choices[0].finish_reason == "stop"
    assert reply.choices[0].message.tool_calls is None
    assert reply.id.startswith("chatcmpl-")
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (80, 15)
    assert reply.usage.total_tokens == 95

    extra = reply.model_extra["code_interpreter"]
    assert extra["container_id"].startswith("cntr_")
    [run] = extra["executions"]
    assert run["code"] == "print(6 * 7)" and run["stdout"] == "42\n" and run["error"] is None

    first, second = stack.upstream.requests
    assert first["tools"][0]["function"]["name"] == "code_interpreter"
    assert "code_interpreter" not in [t.get("type") for t in first["tools"]]
    assert first["messages"][0]["role"] == "system"
    assert "/mnt/data" in first["messages"][0]["content"]
    tool_msg = second["messages"][-1]
    assert tool_msg["role"] == "tool" and "42" in tool_msg["content"]
    assert second["messages"][-2]["tool_calls"][0]["function"]["name"] == "code_interpreter"
    # The upstream gets the configured key, never the client's.
    assert stack.upstream.headers[0]["authorization"] == "Bearer sk-upstream-secret"


def test_several_rounds_share_kernel_state(stack: Stack) -> None:
    stack.upstream.push(
        completion("Let me set things up.", tool_calls=[code_call("x = 40")]),
        completion(tool_calls=[code_call("x += 2")]),
        completion(tool_calls=[code_call("print(x)")]),
        completion("x is 42."),
    )
    reply = stack.client().chat.completions.create(model="gpt-test", messages=USER, tools=CI)
    assert reply.choices[0].message.content == "Let me set things up.\n\nx is 42."
    runs = reply.model_extra["code_interpreter"]["executions"]
    assert [r["stdout"] for r in runs] == ["", "", "42\n"]
    assert reply.usage is not None and reply.usage.total_tokens == 4 * 15
    assert "42" in stack.upstream.requests[3]["messages"][-1]["content"]


def test_round_limit_ends_with_a_call_without_tools(make_stack: Any) -> None:
    stack = make_stack(max_rounds=2)
    stack.upstream.push(
        completion(tool_calls=[code_call("print(1)")]),
        completion(tool_calls=[code_call("print(2)")]),
        completion("Giving up on more code: the answer is 2."),
    )
    reply = stack.client().chat.completions.create(model="gpt-test", messages=USER, tools=CI)
    assert reply.choices[0].message.content == "Giving up on more code: the answer is 2."
    last = stack.upstream.requests[-1]
    assert "tools" not in last and "tool_choice" not in last


def test_user_code_errors_go_back_to_the_model(stack: Stack) -> None:
    stack.upstream.push(
        completion(tool_calls=[code_call("1 / 0")]),
        completion(tool_calls=[code_call("print('fixed')")]),
        completion("Fixed it."),
    )
    reply = stack.client().chat.completions.create(model="gpt-test", messages=USER, tools=CI)
    assert reply.choices[0].message.content == "Fixed it."
    traceback = stack.upstream.requests[1]["messages"][-1]["content"]
    assert "ZeroDivisionError" in traceback and "\x1b[" not in traceback


def test_bad_tool_arguments_go_back_to_the_model(stack: Stack) -> None:
    stack.upstream.push(
        completion(tool_calls=[tool_call("code_interpreter", '{"language": "python"}')]),
        completion(tool_calls=[code_call("print(1)", language="cobol")]),
        completion("Sorry."),
    )
    reply = stack.client().chat.completions.create(model="gpt-test", messages=USER, tools=CI)
    assert reply.choices[0].message.content == "Sorry."
    assert '"code"' in stack.upstream.requests[1]["messages"][-1]["content"]
    assert "Unsupported language" in stack.upstream.requests[2]["messages"][-1]["content"]


def test_stream_framing_keepalive_and_usage(stack: Stack) -> None:
    stack.upstream.push(
        completion(tool_calls=[code_call("import time; time.sleep(0.7); print('done')")]),
        completion("It printed done."),
    )
    body = {
        "model": "gpt-test",
        "messages": USER,
        "tools": CI,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    response = httpx.post(
        f"{stack.url}/v1/chat/completions",
        json=body,
        timeout=60,
        headers={"authorization": f"Bearer {KEY_A}"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    raw = response.text
    assert ": keepalive\n\n" in raw
    events = sse_events(raw)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert len({c["id"] for c in chunks}) == 1
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    roles = [c["choices"][0]["delta"].get("role") for c in chunks if c["choices"]]
    assert roles[0] == "assistant" and roles.count("assistant") == 1
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "It printed done."
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "stop" and finishes.count("stop") == 1
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["total_tokens"] == 30
    assert all(c["usage"] is None for c in chunks[:-1])
    # No tool-call deltas of the interpreter reach the client.
    assert not any(c["choices"] and c["choices"][0]["delta"].get("tool_calls") for c in chunks)


def test_stream_helper_accepts_the_stream(stack: Stack) -> None:
    stack.upstream.push(
        completion("First I compute.", tool_calls=[code_call("print(2 ** 10)")]),
        completion("2 to the 10th is 1024."),
    )
    with stack.client().chat.completions.stream(
        model="gpt-test",
        messages=USER,
        tools=CI,
        stream_options={"include_usage": True},
    ) as stream:
        deltas = [e.delta for e in stream if e.type == "content.delta"]
        final = stream.get_final_completion()
    assert "".join(deltas) == "First I compute.\n\n2 to the 10th is 1024."
    assert final.choices[0].message.content == "First I compute.\n\n2 to the 10th is 1024."
    assert final.choices[0].message.role == "assistant"
    assert final.choices[0].finish_reason == "stop"
    assert final.usage is not None and final.usage.total_tokens == 30


def test_without_include_usage_no_usage_chunk(stack: Stack) -> None:
    stack.upstream.push(completion(tool_calls=[code_call("print(1)")]), completion("One."))
    chunks = list(
        stack.client().chat.completions.create(
            model="gpt-test", messages=USER, tools=CI, stream=True
        )
    )
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)
    # The upstream is always asked for usage, to sum it.
    assert stack.upstream.requests[0]["stream_options"] == {"include_usage": True}


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def test_client_function_calls_are_returned_to_the_client(stack: Stack) -> None:
    stack.upstream.push(
        completion(tool_calls=[code_call("print(len('Paris'))")]),
        completion(tool_calls=[tool_call("get_weather", '{"city": "Paris"}', "call_w1")]),
    )
    reply = stack.client().chat.completions.create(
        model="gpt-test", messages=USER, tools=[WEATHER, *CI], tool_choice="auto"
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    [call] = choice.message.tool_calls
    assert (call.id, call.function.name, call.function.arguments) == (
        "call_w1",
        "get_weather",
        '{"city": "Paris"}',
    )
    sent = stack.upstream.requests[0]
    assert [t["function"]["name"] for t in sent["tools"]] == ["get_weather", "code_interpreter"]
    assert sent["tool_choice"] == "auto"


def test_client_function_calls_stream_to_the_client(stack: Stack) -> None:
    stack.upstream.push(
        completion(
            tool_calls=[
                tool_call("get_weather", '{"city": "Oslo"}', "call_a"),
                tool_call("get_weather", '{"city": "Rome"}', "call_b"),
            ]
        )
    )
    with stack.client().chat.completions.stream(
        model="gpt-test",
        messages=USER,
        tools=[WEATHER, *CI],
    ) as stream:
        final = stream.get_final_completion()
    calls = final.choices[0].message.tool_calls
    assert calls is not None
    assert [(c.id, c.function.arguments) for c in calls] == [
        ("call_a", '{"city": "Oslo"}'),
        ("call_b", '{"city": "Rome"}'),
    ]
    assert final.choices[0].finish_reason == "tool_calls"


def test_mixed_turn_runs_code_and_lets_the_model_call_again(stack: Stack) -> None:
    stack.upstream.push(
        completion(
            tool_calls=[
                code_call("print(3)"),
                tool_call("get_weather", '{"city": "Oslo"}', "call_x"),
            ]
        ),
        completion(tool_calls=[tool_call("get_weather", '{"city": "Oslo"}', "call_y")]),
    )
    reply = stack.client().chat.completions.create(
        model="gpt-test", messages=USER, tools=[WEATHER, *CI]
    )
    assert [c.id for c in reply.choices[0].message.tool_calls or []] == ["call_y"]
    history = stack.upstream.requests[1]["messages"]
    # Every tool call in the history has its answer (OpenAI rejects anything else).
    assert [c["id"] for c in history[-2]["tool_calls"]] == [history[-1]["tool_call_id"]]


def test_file_in_is_read_by_the_code(stack: Stack) -> None:
    client = stack.client()
    csv = b"item,amount\napples,3\npears,4.5\nplums,12\n"
    uploaded = client.files.create(file=("sales.csv", io.BytesIO(csv)), purpose="assistants")
    stack.upstream.push(
        completion(
            tool_calls=[
                code_call(
                    "import pandas as pd\nprint(pd.read_csv('/mnt/data/sales.csv')['amount'].sum())"
                )
            ]
        ),
        completion("The total is 19.5."),
    )
    reply = client.chat.completions.create(
        model="gpt-test",
        messages=USER,
        tools=[
            {
                "type": "code_interpreter",
                "container": {
                    "type": "auto",
                    "file_ids": [uploaded.id],
                },
            }
        ],
    )
    assert reply.choices[0].message.content == "The total is 19.5."
    assert "/mnt/data/sales.csv" in stack.upstream.requests[0]["messages"][0]["content"]
    assert "19.5" in stack.upstream.requests[1]["messages"][-1]["content"]


def test_files_out_are_downloadable(stack: Stack) -> None:
    client = stack.client()
    code = (
        "import matplotlib.pyplot as plt\n"
        "plt.plot([1, 2, 3], [1, 4, 9])\n"
        "plt.savefig('/mnt/data/squares.png')\n"
        "open('/mnt/data/numbers.csv', 'w').write('n,sq\\n2,4\\n')\n"
        "plt.show()\n"
    )
    stack.upstream.push(completion(tool_calls=[code_call(code)]), completion("Here you go."))
    reply = client.chat.completions.create(model="gpt-test", messages=USER, tools=CI)
    [run] = reply.model_extra["code_interpreter"]["executions"]
    saved = {f["path"]: f for f in run["files"]}
    assert set(saved) == {"/mnt/data/squares.png", "/mnt/data/numbers.csv"}
    png = client.files.content(saved["/mnt/data/squares.png"]["file_id"])
    assert png.read().startswith(b"\x89PNG\r\n\x1a\n")
    assert png.response.headers["content-type"] == "image/png"
    assert client.files.content(saved["/mnt/data/numbers.csv"]["file_id"]).read() == b"n,sq\n2,4\n"
    [image] = run["images"]
    assert client.files.content(image["file_id"]).read().startswith(b"\x89PNG")
    listed = {f.id: f for f in client.files.list(purpose="assistants_output")}
    assert set(listed) == {
        saved["/mnt/data/squares.png"]["file_id"],
        saved["/mnt/data/numbers.csv"]["file_id"],
        image["file_id"],
    }
    tool_text = stack.upstream.requests[1]["messages"][-1]["content"]
    assert "/mnt/data/squares.png" in tool_text and "1 image(s)" in tool_text


def test_sandbox_timeout_mid_loop(make_stack: Any) -> None:
    stack = make_stack(code_timeout=1)
    stack.upstream.push(
        completion(tool_calls=[code_call("x = 5")]),
        completion(tool_calls=[code_call("while True:\n    pass")]),
        completion(tool_calls=[code_call("print(x)")]),
        completion("The loop was stopped; x is still 5."),
    )
    reply = stack.client().chat.completions.create(model="gpt-test", messages=USER, tools=CI)
    assert reply.choices[0].message.content == "The loop was stopped; x is still 5."
    runs = reply.model_extra["code_interpreter"]["executions"]
    assert runs[1]["timed_out"] is True
    assert "timed out" in stack.upstream.requests[2]["messages"][-1]["content"]
    assert runs[2]["stdout"] == "5\n"


def test_n_greater_than_one_is_refused(stack: Stack) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        stack.client().chat.completions.create(model="gpt-test", messages=USER, tools=CI, n=2)
    assert exc.value.param == "n"
    assert stack.upstream.requests == []


def test_reserved_function_name_is_refused(stack: Stack) -> None:
    tool = {"type": "function", "function": {"name": "code_interpreter", "parameters": {}}}
    with pytest.raises(openai.BadRequestError) as exc:
        stack.client().chat.completions.create(model="gpt-test", messages=USER, tools=[tool])
    assert exc.value.param == "tools[0].function.name"


def test_other_fields_pass_through(stack: Stack) -> None:
    stack.upstream.push(completion("Plain."))
    stack.client().chat.completions.create(
        model="gpt-test",
        messages=USER,
        tools=CI,
        temperature=0.3,
        max_completion_tokens=77,
        metadata={"k": "v"},
        extra_body={"vendor_field": {"x": 1}},
    )
    sent = stack.upstream.requests[0]
    assert (sent["temperature"], sent["max_completion_tokens"]) == (0.3, 77)
    assert sent["metadata"] == {"k": "v"} and sent["vendor_field"] == {"x": 1}


def test_upstream_errors_keep_status_and_body(stack: Stack) -> None:
    body = {
        "error": {
            "message": "Invalid 'temperature'",
            "type": "invalid_request_error",
            "param": "temperature",
            "code": "decimal_below_min_value",
        }
    }
    stack.upstream.push(Error(400, body))
    with pytest.raises(openai.BadRequestError) as bad:
        stack.client().chat.completions.create(model="gpt-test", messages=USER, tools=CI)
    assert bad.value.body == body["error"]

    limited = {
        "error": {
            "message": "Rate limit reached",
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    stack.upstream.push(Error(429, limited, {"retry-after": "7"}))
    with pytest.raises(openai.RateLimitError) as rate:
        stack.client().chat.completions.create(model="gpt-test", messages=USER, tools=CI)
    assert rate.value.response.headers["retry-after"] == "7"
    assert rate.value.code == "rate_limit_exceeded"


def test_upstream_failure_after_code_ran_forbids_retry(stack: Stack) -> None:
    stack.upstream.push(
        completion(tool_calls=[code_call("open('/mnt/data/side-effect.txt', 'a').write('x')")]),
        Error(
            500,
            {
                "error": {
                    "message": "The server had an error",
                    "type": "server_error",
                    "param": None,
                    "code": None,
                }
            },
        ),
    )
    client = stack.client(max_retries=2)
    with pytest.raises(openai.InternalServerError) as exc:
        client.chat.completions.create(model="gpt-test", messages=USER, tools=CI)
    assert exc.value.response.headers["x-should-retry"] == "false"
    # The SDK obeyed: the request was not replayed, so the code ran once.
    assert len(stack.upstream.requests) == 2


def test_upstream_unreachable_is_502(make_stack: Any) -> None:
    stack = make_stack(upstream_base_url="http://127.0.0.1:9/v1")
    with pytest.raises(openai.InternalServerError) as exc:
        stack.client().chat.completions.create(model="gpt-test", messages=USER, tools=CI)
    assert exc.value.status_code == 502 and exc.value.code == "upstream_unreachable"
    with pytest.raises(openai.InternalServerError):
        stack.client().chat.completions.create(model="gpt-test", messages=USER, stream=True)


def test_stream_error_after_first_byte_is_in_band(stack: Stack) -> None:
    stack.upstream.push(
        completion("Working on it.", tool_calls=[code_call("print(1)")]),
        Error(
            500,
            {
                "error": {
                    "message": "upstream broke",
                    "type": "server_error",
                    "param": None,
                    "code": None,
                }
            },
        ),
    )
    stream = stack.client().chat.completions.create(
        model="gpt-test", messages=USER, tools=CI, stream=True
    )
    seen = []
    with pytest.raises(openai.APIError) as exc:
        for chunk in stream:
            seen.append(chunk)
    assert "upstream broke" in str(exc.value.message)
    assert seen and seen[0].choices[0].delta.content in ("", "Working on it.")
