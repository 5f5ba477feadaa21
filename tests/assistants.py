"""What the tests of the Assistants API share: the SDK's deprecation warnings silenced, a
function tool, an event handler that records what the SDK folds, and waiting for a run."""

import time
from collections.abc import Callable
from typing import Any, TypeVar

import openai
import pytest
from openai import AssistantEventHandler
from openai.types.beta.threads import Run, Text, TextDelta
from openai.types.beta.threads.runs import ToolCall, ToolCallDelta

from tests.proxy.conftest import KEY_A

T = TypeVar("T")

# What the SDK sends to the Assistants API, for raw requests.
AUTH = {"authorization": f"Bearer {KEY_A}", "openai-beta": "assistants=v2"}

# The SDK warns on every call of `client.beta.assistants` and `client.beta.threads`.
SDK_WARNINGS = [
    pytest.mark.filterwarnings("ignore:The Assistants API is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning"),
]

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


class Recorder(AssistantEventHandler):
    """Records the stream's event names and what the SDK's callbacks see."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []
        self.text = ""
        self.code = ""
        self.outputs: list[Any] = []
        self.tool_calls: list[str] = []
        self.texts_done: list[str] = []

    def on_event(self, event: Any) -> None:
        self.events.append(event.event)

    def on_text_delta(self, delta: TextDelta, snapshot: Text) -> None:
        self.text += delta.value or ""

    def on_text_done(self, text: Text) -> None:
        self.texts_done.append(text.value)

    def on_tool_call_created(self, tool_call: ToolCall) -> None:
        self.tool_calls.append(tool_call.type)

    def on_tool_call_delta(self, delta: ToolCallDelta, snapshot: ToolCall) -> None:
        if delta.type == "code_interpreter" and delta.code_interpreter is not None:
            self.code += delta.code_interpreter.input or ""
            self.outputs += delta.code_interpreter.outputs or []


def collapsed(events: list[str]) -> list[str]:
    """Event names with each run of the same delta event shown once (how many deltas a text
    or a code arrives in depends on the upstream)."""
    out: list[str] = []
    for name in events:
        if not (name.endswith(".delta") and out and out[-1] == name):
            out.append(name)
    return out


def wait_for(get: Callable[[], T], done: Callable[[T], bool], timeout: float = 60.0) -> T:
    """Poll `get` until `done` holds (a condition to reach, not a time budget)."""
    deadline = time.monotonic() + timeout
    while True:
        value = get()
        if done(value):
            return value
        assert time.monotonic() < deadline, f"still {value!r}"
        time.sleep(0.05)


def run_status(client: openai.OpenAI, thread_id: str, run_id: str) -> Callable[[], Run]:
    return lambda: client.beta.threads.runs.retrieve(run_id, thread_id=thread_id)


def error(exc: pytest.ExceptionInfo[openai.APIStatusError], status: int) -> dict[str, Any]:
    """The error of an SDK exception, checked to be OpenAI's shape with `status`."""
    assert exc.value.status_code == status
    body = exc.value.body
    assert isinstance(body, dict) and set(body) == {"message", "type", "param", "code"}
    return body
