"""Upstream modes of the Responses API: the upstream's own /responses (the interpreter is a
function tool whose calls run here), the chat-completions bridge, and detecting which once."""

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from proxy.jsonutil import dumps, loads
from tests.e2e.conftest import Stack
from tests.proxy.conftest import KEY_A
from tests.servers import run_server
from tests.upstream import completion
from tests.upstream_responses import NativeUpstream, answer

CI = [{"type": "code_interpreter", "container": {"type": "auto"}}]
OUTPUTS = ["code_interpreter_call.outputs"]


@pytest.fixture
def native() -> Iterator[NativeUpstream]:
    fake = NativeUpstream()
    with run_server(fake.app) as url:
        fake.url = url
        yield fake


def code(source: str) -> str:
    return dumps({"code": source}).decode()


@pytest.mark.parametrize("stream", [False, True])
def test_native_upstream_runs_the_interpreter_here(
    make_stack: Any, native: NativeUpstream, stream: bool
) -> None:
    stack: Stack = make_stack(upstream_base_url=native.url + "/v1")
    native.answer(
        answer("Computing.", calls=[("call_n1", "code_interpreter", code("print(6 * 7)"))]),
        answer("It is 42.", input_tokens=20, output_tokens=3),
    )
    client = stack.client()
    if stream:
        with client.responses.stream(
            model="gpt-native", input="6*7?", tools=CI, include=OUTPUTS, instructions="Be exact."
        ) as events:
            response = events.get_final_response()
    else:
        response = client.responses.create(
            model="gpt-native", input="6*7?", tools=CI, include=OUTPUTS, instructions="Be exact."
        )
    assert response.output_text == "Computing.It is 42."
    assert [item.type for item in response.output] == [
        "message",
        "code_interpreter_call",
        "message",
    ]
    assert response.output[1].outputs[0].logs == "42"  # type: ignore[union-attr,index]
    assert response.model == "gpt-native"
    assert response.usage is not None and response.usage.total_tokens == 15 + 23
    first, second = native.responses_requests
    assert first["store"] is False and first["model"] == "gpt-native"
    assert bool(first.get("stream")) is stream
    assert [t["name"] for t in first["tools"]] == ["code_interpreter"]
    assert first["tools"][0]["type"] == "function" and "parameters" in first["tools"][0]
    assert first["input"][0]["role"] == "system"
    assert first["input"][0]["content"].startswith("Be exact.")
    assert first["input"][1] == {"role": "user", "content": "6*7?"}
    call, result = second["input"][-2:]
    assert call == {
        "type": "function_call",
        "call_id": "call_n1",
        "name": "code_interpreter",
        "arguments": code("print(6 * 7)"),
    }
    assert result["type"] == "function_call_output" and result["call_id"] == "call_n1"
    assert "42" in result["output"]
    assert stack.upstream.requests == []  # no chat completions


def test_native_client_functions_and_options(make_stack: Any, native: NativeUpstream) -> None:
    stack: Stack = make_stack(upstream_base_url=native.url + "/v1")
    weather = {
        "type": "function",
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
    native.answer(answer(calls=[("call_w", "get_weather", '{"city":"Oslo"}')]))
    schema = {"type": "object", "properties": {}, "additionalProperties": False}
    response = stack.client().responses.create(
        model="gpt-native",
        input="Weather?",
        tools=[weather, *CI],
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=50,
        text={"format": {"type": "json_schema", "name": "w", "schema": schema}},
        reasoning={"effort": "low"},
    )
    [call] = response.output
    assert call.type == "function_call" and call.call_id == "call_w"
    [sent] = native.responses_requests
    assert sent["tool_choice"] == {"type": "function", "name": "get_weather"}
    assert sent["max_output_tokens"] == 50
    assert sent["text"] == {"format": {"type": "json_schema", "name": "w", "schema": schema}}
    assert sent["reasoning"] == {"effort": "low"}
    assert [t["name"] for t in sent["tools"]] == ["get_weather", "code_interpreter"]


def test_auto_detects_a_chat_only_upstream_once(make_stack: Any) -> None:
    chat_only = NativeUpstream(native=False)
    with run_server(chat_only.app) as url:
        chat_only.url = url
        stack: Stack = make_stack(upstream_base_url=url + "/v1")
        client = stack.client()
        for n in range(3):
            chat_only.push(completion(f"Reply {n}."))
            assert client.responses.create(model="m", input="hi").output_text == f"Reply {n}."
        assert chat_only.responses_hits == 1
        assert len(chat_only.requests) == 3


def test_auto_uses_a_native_upstream_and_remembers(make_stack: Any, native: NativeUpstream) -> None:
    stack: Stack = make_stack(upstream_base_url=native.url + "/v1")
    native.answer(answer("One."), answer("Two."))
    client = stack.client()
    assert client.responses.create(model="m", input="1").output_text == "One."
    assert client.responses.create(model="m", input="2").output_text == "Two."
    assert native.responses_hits == 2 and native.requests == []


@pytest.mark.parametrize("mode", ["chat", "native"])
def test_a_setting_forces_the_mode(make_stack: Any, native: NativeUpstream, mode: str) -> None:
    stack: Stack = make_stack(upstream_base_url=native.url + "/v1", upstream_responses=mode)
    native.answer(answer("Native."))
    native.push(completion("Chat."))
    reply = stack.client().responses.create(model="m", input="hi").output_text
    assert reply == ("Chat." if mode == "chat" else "Native.")
    assert native.responses_hits == (0 if mode == "chat" else 1)


def test_a_native_model_error_is_not_taken_for_a_missing_endpoint(
    make_stack: Any, native: NativeUpstream
) -> None:
    async def missing_model(request: Request) -> JSONResponse:
        native.responses_hits += 1
        error = {"message": "no such model", "type": "invalid_request_error", "param": "model"}
        return JSONResponse({"error": {**error, "code": "model_not_found"}}, status_code=404)

    native.app.router.routes.insert(0, Route("/v1/responses", missing_model, methods=["POST"]))
    stack: Stack = make_stack(upstream_base_url=native.url + "/v1")
    response = httpx.post(
        f"{stack.url}/v1/responses",
        json={"model": "nope", "input": "hi"},
        headers={"authorization": f"Bearer {KEY_A}"},
    )
    assert response.status_code == 404
    assert loads(response.content)["error"]["code"] == "model_not_found"
    assert native.responses_hits == 1 and native.requests == []
