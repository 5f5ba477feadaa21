"""Replays of OpenAI exchanges (vcrpy cassettes under tests/cassettes): what the proxy parses
from a real upstream and what it sends on are byte-compatible with OpenAI's wire format.

Three cassettes are recordings of api.openai.com (see tests/cassettes/SOURCES.md); the
`chat-code-interpreter-*` ones are written in the same format for the interpreter loop.
"""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import vcr
import yaml

from proxy.jsonutil import loads
from tests.e2e.conftest import Stack
from tests.proxy.conftest import KEY_A

CASSETTES = Path(__file__).parents[1] / "cassettes"


@pytest.fixture
def stack(make_stack: Any) -> Stack:
    stack: Stack = make_stack(upstream_base_url="https://api.openai.com/v1")
    return stack


class Replay:
    """vcrpy in replay-only mode; `sent` collects the request bodies the proxy sent upstream."""

    def __init__(self) -> None:
        self.sent: list[Any] = []
        self.vcr = vcr.VCR(
            cassette_library_dir=str(CASSETTES),
            record_mode="none",
            match_on=["method", "scheme", "host", "port", "path"],
            ignore_localhost=True,
            filter_headers=["authorization"],
            before_record_request=self._seen,
        )

    def _seen(self, request: Any) -> Any:
        if request.body:
            self.sent.append(loads(request.body))
        return request

    def __call__(self, name: str) -> Any:
        return self.vcr.use_cassette(name)


@pytest.fixture
def replay() -> Iterator[Replay]:
    yield Replay()


def recorded_body(name: str, index: int = 0) -> str:
    data = yaml.safe_load((CASSETTES / name).read_text())
    body = data["interactions"][index]["response"]["body"]["string"]
    return body if isinstance(body, str) else body.decode()


def test_plain_completion_passes_through(stack: Stack, replay: Replay) -> None:
    with replay("chat-nonstream-plain.yaml") as cassette:
        reply = stack.client().chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "Say hello."}]
        )
        assert cassette.play_count == 1
    assert reply.model_dump(exclude_unset=True) == loads(recorded_body("chat-nonstream-plain.yaml"))
    assert replay.sent[-1] == {
        "messages": [{"role": "user", "content": "Say hello."}],
        "model": "gpt-4o",
    }


def test_recorded_stream_passes_through_byte_for_byte(stack: Stack, replay: Replay) -> None:
    name = "chat-stream-tool-deltas-full-headers.yaml"
    body = {
        "model": "gpt-4o-mini",
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "What is 1231 * 2331?"}],
    }
    with replay(name):
        response = httpx.post(
            f"{stack.url}/v1/chat/completions",
            json=body,
            timeout=30,
            headers={"authorization": f"Bearer {KEY_A}"},
        )
    assert response.status_code == 200
    assert response.text == recorded_body(name)


def test_recorded_client_tool_call_through_the_loop(stack: Stack, replay: Replay) -> None:
    """A real recorded stream of a client-function call, parsed by the loop and re-emitted."""
    multiply = {
        "type": "function",
        "function": {
            "name": "multiply",
            "description": "Multiply two numbers.",
            "parameters": {
                "type": "object",
                "required": ["a", "b"],
                "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            },
        },
    }
    with (
        replay("chat-stream-tool-deltas-full-headers.yaml"),
        stack.client().chat.completions.stream(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "What is 1231 * 2331?"}],
            tools=[multiply, {"type": "code_interpreter"}],
            stream_options={"include_usage": True},
        ) as stream,
    ):
        final = stream.get_final_completion()
    [call] = final.choices[0].message.tool_calls or []
    assert call.id == "call_1EYWDzueHEp8OsB8jJSEp7WB"
    assert call.function.name == "multiply"
    assert loads(call.function.arguments) == {"a": 1231, "b": 2331}
    assert final.choices[0].finish_reason == "tool_calls"
    assert final.usage is not None and final.usage.total_tokens > 0


def test_upstream_401_keeps_status_and_body(stack: Stack, replay: Replay) -> None:
    with (
        replay("error-401-invalid-api-key-chat.yaml"),
        pytest.raises(openai.AuthenticationError) as exc,
    ):
        stack.client().chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "hi"}],
            tools=[{"type": "code_interpreter"}],
        )
    assert exc.value.code == "invalid_api_key"
    assert exc.value.body == loads(recorded_body("error-401-invalid-api-key-chat.yaml"))["error"]


def test_code_interpreter_loop_streamed(stack: Stack, replay: Replay) -> None:
    with (
        replay("chat-code-interpreter-stream.yaml") as cassette,
        stack.client().chat.completions.stream(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Mean of 3,4,5,8?"}],
            tools=[{"type": "code_interpreter"}],
            stream_options={"include_usage": True},
        ) as stream,
    ):
        final = stream.get_final_completion()
    assert cassette.play_count == 2
    assert final.choices[0].message.content == "The mean of 3, 4, 5 and 8 is 5.0."
    assert final.usage is not None
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (211 + 262, 31 + 12)
    assert final.usage.prompt_tokens_details is not None
    assert final.usage.prompt_tokens_details.cached_tokens == 128
    follow_up = replay.sent[-1]
    assert follow_up["messages"][-1] == {
        "role": "tool",
        "tool_call_id": "call_Qm3vT8kP2xW9rL4nB6yH1dZs",
        "content": "[stdout]\n5\n",
    }


def test_code_interpreter_loop_not_streamed(stack: Stack, replay: Replay) -> None:
    with replay("chat-code-interpreter-nonstream.yaml") as cassette:
        reply = stack.client().chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "Mean of 3,4,5,8?"}],
            tools=[{"type": "code_interpreter"}],
        )
    assert cassette.play_count == 2
    assert reply.choices[0].message.content == "The mean of 3, 4, 5 and 8 is 5.0."
    assert reply.usage is not None and reply.usage.total_tokens == 242 + 274
    assert reply.system_fingerprint == "fp_c27f75025a"
    assert replay.sent[-1]["messages"][-1]["content"] == "[stdout]\n5\n"


def test_recorded_client_function_round_trip_with_the_interpreter_on(
    stack: Stack, replay: Replay
) -> None:
    """The client's own function call and its follow-up, both through the loop (recorded)."""
    weather = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "",
            "strict": True,
            "parameters": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
    tools = [weather, {"type": "code_interpreter"}]
    question = {"role": "user", "content": "What's the weather in Paris?"}
    client = stack.client()
    with replay("chat-nonstream-tool-calls-and-tool-followup.yaml") as cassette:
        first = client.chat.completions.create(
            model="gpt-4o-mini", messages=[question], tools=tools, tool_choice="auto"
        )
        [call] = first.choices[0].message.tool_calls or []
        assert (call.id, call.function.arguments) == (
            "call_HI3bFDQuCgzux3QrZyumWfQf",
            '{"city":"Paris"}',
        )
        assert first.choices[0].finish_reason == "tool_calls"
        second = client.chat.completions.create(
            model="gpt-4o-mini",
            tools=tools,
            messages=[
                question,
                first.choices[0].message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id, "content": "It's sunny in Paris."},
            ],
        )
        assert cassette.play_count == 2
    assert second.choices[0].message.content == "The weather in Paris is sunny."
    assert second.usage is not None and second.usage.total_tokens == 78
    assert replay.sent[-1]["messages"][-1] == {
        "role": "tool",
        "tool_call_id": "call_HI3bFDQuCgzux3QrZyumWfQf",
        "content": "It's sunny in Paris.",
    }
