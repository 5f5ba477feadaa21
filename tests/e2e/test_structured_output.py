"""Structured output with the interpreter on: the visible content is exactly the model's JSON.

The clients are the real ones: the OpenAI SDK's `chat.completions.parse` and `.stream(...,
response_format=Model)` helpers, and LangChain's `with_structured_output`, against a real
server with the real sandbox and a scripted model that runs code before it answers.
"""

from typing import Any

import httpx
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

from proxy.jsonutil import dumps, loads
from tests.e2e.conftest import Stack
from tests.e2e.test_chat_loop import sse_events
from tests.proxy.conftest import KEY_A
from tests.upstream import code_call, completion

QUESTION = [{"role": "user", "content": "What is the mean of 3, 4, 5 and 8?"}]
MEAN_CODE = "print(sum([3, 4, 5, 8]) / 4)"


class Mean(BaseModel):
    mean: float
    report: str


# Written with no spaces, as models do, so that any change to it would show.
ANSWER = '{"mean":5.0,"report":"sandbox:/mnt/data/report.csv"}'


def script_code_then_json(stack: Stack) -> None:
    """Round one: some prose and a code call; round two: the JSON answer."""
    stack.upstream.push(
        completion("Let me compute that first.", tool_calls=[code_call(MEAN_CODE)]),
        completion(ANSWER),
    )


def test_parse_with_a_virtual_model(stack: Stack) -> None:
    script_code_then_json(stack)
    reply = stack.client().chat.completions.parse(
        model="gpt-test+code", messages=QUESTION, response_format=Mean
    )
    message = reply.choices[0].message
    assert message.content == ANSWER
    assert message.parsed == Mean(mean=5.0, report="sandbox:/mnt/data/report.csv")
    # What ran is still reported, outside the content.
    [run] = reply.model_extra["code_interpreter"]["executions"]
    assert run["code"] == MEAN_CODE and run["stdout"] == "5.0\n"
    sent = stack.upstream.requests[0]
    assert sent["response_format"]["type"] == "json_schema"
    assert [t["function"]["name"] for t in sent["tools"]] == ["code_interpreter"]


def test_json_object_with_the_markdown_transcript_asked_for(stack: Stack) -> None:
    script_code_then_json(stack)
    reply = stack.client().chat.completions.create(
        model="gpt-test",
        messages=QUESTION,
        tools=[{"type": "code_interpreter", "transcript": "markdown"}],
        response_format={"type": "json_object"},
    )
    assert reply.choices[0].message.content == ANSWER
    assert reply.choices[0].finish_reason == "stop"


def test_stream_helper_parses_the_final_json(stack: Stack) -> None:
    script_code_then_json(stack)
    with stack.client().chat.completions.stream(
        model="gpt-test+code", messages=QUESTION, response_format=Mean
    ) as stream:
        deltas = [e.delta for e in stream if e.type == "content.delta"]
        final = stream.get_final_completion()
    assert "".join(deltas) == ANSWER
    assert final.choices[0].message.content == ANSWER
    assert final.choices[0].message.parsed == Mean(mean=5.0, report="sandbox:/mnt/data/report.csv")


def test_raw_stream_carries_only_the_json(stack: Stack) -> None:
    stack.upstream.push(
        completion(tool_calls=[code_call("import time; time.sleep(0.5); print(5.0)")]),
        completion("The code ran.", tool_calls=[code_call(MEAN_CODE)]),
        completion(ANSWER),
    )
    body = {
        "model": "gpt-test+code",
        "messages": QUESTION,
        "stream": True,
        "stream_options": {"include_usage": True},
        "response_format": {"type": "json_object"},
    }
    response = httpx.post(
        f"{stack.url}/v1/chat/completions",
        content=dumps(body),
        headers={"authorization": f"Bearer {KEY_A}", "content-type": "application/json"},
        timeout=60,
    )
    assert response.status_code == 200
    assert ": keepalive\n\n" in response.text  # still kept alive while code runs
    chunks = sse_events(response.text)[:-1]
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert content == ANSWER
    assert chunks[-1]["usage"]["total_tokens"] == 45


def test_langchain_with_structured_output(stack: Stack) -> None:
    script_code_then_json(stack)
    with httpx.Client(timeout=60) as http:
        model = ChatOpenAI(
            model="gpt-test+code",
            base_url=stack.url + "/v1",
            api_key=KEY_A,  # type: ignore[arg-type]
            max_retries=0,
            http_client=http,
        )
        answer: Any = model.with_structured_output(Mean).invoke(QUESTION)
    assert answer == Mean(mean=5.0, report="sandbox:/mnt/data/report.csv")
    sent = stack.upstream.requests[0]
    assert sent["model"] == "gpt-test"
    assert sent["response_format"]["json_schema"]["name"] == "Mean"


def test_the_next_turn_recognises_the_json_reply(stack: Stack) -> None:
    """The JSON the client saw is what the conversation is remembered by."""
    stack.upstream.push(
        completion(tool_calls=[code_call("kept = 41")]),
        completion(ANSWER),
    )
    client = stack.client()
    first = client.chat.completions.parse(
        model="gpt-test+code", messages=QUESTION, response_format=Mean
    )
    stack.upstream.push(
        completion(tool_calls=[code_call("print(kept + 1)")]),
        completion('{"mean":42.0,"report":""}'),
    )
    second = client.chat.completions.parse(
        model="gpt-test+code",
        messages=[
            *QUESTION,
            {"role": "assistant", "content": first.choices[0].message.content},
            {"role": "user", "content": "And kept + 1?"},
        ],
        response_format=Mean,
    )
    assert second.choices[0].message.parsed == Mean(mean=42.0, report="")
    assert "[stdout]\n42" in stack.upstream.requests[3]["messages"][-1]["content"]
    history = stack.upstream.requests[2]["messages"]
    assert [m["role"] for m in history] == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
        "user",
    ]
    assert loads(history[4]["content"]) == loads(ANSWER)
