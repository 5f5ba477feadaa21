"""Reading a Responses request into the engine's chat shapes (pure functions, no server)."""

import pytest

from proxy.errors import InvalidRequestError
from proxy.jsonutil import dumps, loads
from proxy.responses import bounded
from proxy.responses_request import read_request


def test_history_items_become_chat_messages() -> None:
    request = read_request(
        {
            "model": "m",
            "input": [
                {"role": "user", "content": "Weather and a sum?"},
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {
                    "type": "code_interpreter_call",
                    "id": "ci_1",
                    "code": "1 + 1",
                    "container_id": "cntr_old",
                    "status": "completed",
                    "outputs": [{"type": "logs", "logs": "2"}],
                },
                {
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": "It is 2.", "annotations": []}],
                },
                {"type": "function_call", "call_id": "c1", "name": "w", "arguments": "{}"},
                {"type": "function_call", "call_id": "c2", "name": "w", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
                {
                    "type": "function_call_output",
                    "call_id": "c2",
                    "output": [{"type": "input_text", "text": "rainy"}],
                },
            ],
        }
    )
    messages = request.messages
    assert [m["role"] for m in messages] == [
        "user",
        "assistant",
        "tool",
        "assistant",
        "tool",
        "tool",
    ]
    ci_call = messages[1]["tool_calls"][0]
    assert ci_call["id"] == "ci_1" and ci_call["function"]["name"] == "code_interpreter"
    assert loads(ci_call["function"]["arguments"]) == {"code": "1 + 1"}
    assert messages[2] == {"role": "tool", "tool_call_id": "ci_1", "content": "2"}
    assert messages[3]["content"] == "It is 2."
    assert [c["id"] for c in messages[3]["tool_calls"]] == ["c1", "c2"]
    assert messages[5]["content"] == "rainy"
    assert request.input_container == "cntr_old"
    assert [i["type"] for i in request.items] == [
        "message",
        "reasoning",
        "code_interpreter_call",
        "message",
        "function_call",
        "function_call",
        "function_call_output",
        "function_call_output",
    ]


def test_tools_and_choices_in_chat_form() -> None:
    request = read_request(
        {
            "model": "m",
            "input": "hi",
            "tools": [
                {"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": True},
                {"type": "code_interpreter", "container": {"type": "auto", "memory_limit": "4g"}},
            ],
            "tool_choice": {"type": "function", "name": "f"},
            "reasoning": {"effort": "low"},
            "text": {"verbosity": "low"},
        }
    )
    assert request.client_tools == [
        {
            "type": "function",
            "function": {"name": "f", "parameters": {"type": "object"}, "strict": True},
        }
    ]
    assert request.tool_choice == {"type": "function", "function": {"name": "f"}}
    assert request.interpreter and request.memory_limit == "4g"
    assert request.options == {"model": "m", "reasoning_effort": "low", "verbosity": "low"}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (
            {
                "model": "m",
                "input": "x",
                "tools": [{"type": "function", "name": "code_interpreter"}],
            },
            "tools[0].name",
        ),
        ({"model": "m", "input": "x", "tool_choice": {"type": "code_interpreter"}}, "tool_choice"),
        ({"model": "m", "input": "x", "text": {"format": {"type": "json_schema"}}}, "text.format"),
        ({"model": "m", "input": "x", "truncation": "auto"}, "truncation"),
        ({"model": "m", "input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
        (
            {"model": "m", "input": [{"role": "user", "content": [{"type": "input_file"}]}]},
            "input[0].content[0]",
        ),
    ],
)
def test_what_cannot_be_honoured_is_refused(body: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidRequestError) as exc:
        read_request(body)
    assert exc.value.param == param


def test_old_interpreter_outputs_are_omitted_first() -> None:
    call = {
        "id": "ci_1",
        "type": "function",
        "function": {"name": "code_interpreter", "arguments": "{}"},
    }
    mine = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    messages = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": None, "tool_calls": [call, mine]},
        {"role": "tool", "tool_call_id": "ci_1", "content": "x" * 5000},
        {"role": "tool", "tool_call_id": "c1", "content": "y" * 5000},
    ]
    out = bounded(messages, 6000)
    assert out[2]["content"] == "[output of an earlier run omitted]"
    assert out[3]["content"] == "y" * 5000  # the client's own function output stays
    assert messages[2]["content"] == "x" * 5000  # the input is not changed
    assert len(dumps(out)) < len(dumps(messages))
