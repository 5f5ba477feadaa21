"""The chat renderers as pure folds: a list of engine events in, what a chat client sees out."""

from typing import Any

from executor.api import ExecutionResult
from proxy.coderunner import Run
from proxy.events import (
    CallFinished,
    CallStarted,
    ClientCall,
    CodeDelta,
    CodeDone,
    Done,
    Event,
    Heartbeat,
    MessageDone,
    RefusalDelta,
    RoundFinished,
    RoundStarted,
    TextDelta,
)
from proxy.jsonutil import loads
from proxy.renderers.chat import ChatCompletionJSON, ChatCompletionSSE
from proxy.streaming import DONE, KEEPALIVE
from proxy.transcript import Transcript

RUN = Run(
    id="exec_1",
    code="print(6 * 7)",
    language="python",
    result=ExecutionResult(session_id="cntr_1", language="python", stdout="42\n"),
)
USAGE = {"prompt_tokens": 30, "completion_tokens": 9, "total_tokens": 39}
RAW = {
    "id": "chatcmpl-up",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-test-2025",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": '{"n":42}', "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 20, "completion_tokens": 4, "total_tokens": 24},
    "system_fingerprint": "fp_1",
}


def code_round(first_text: str, last_text: str, raw: dict[str, Any] | None) -> list[Event]:
    return [
        RoundStarted(0, "gpt-test-2025"),
        TextDelta(first_text[:4]),
        TextDelta(first_text[4:]),
        MessageDone(0, first_text, None, False, "tool_calls", None, None),
        CallStarted("ci_1", "call_1", "cntr_1"),
        Heartbeat(),
        CodeDelta("ci_1", RUN.code),
        CodeDone("ci_1", RUN.code, "python"),
        Heartbeat(),
        CallFinished("ci_1", RUN, None),
        RoundFinished(0),
        RoundStarted(1, "gpt-test-2025"),
        TextDelta(last_text),
        MessageDone(1, last_text, None, True, "stop", None, raw),
        Done("stop", last_text, USAGE, [], "cntr_1"),
    ]


def markdown() -> Transcript:
    return Transcript("markdown", lambda saved: f"https://files/{saved.file_id}")


def chunks(frames: list[bytes]) -> list[Any]:
    return [loads(f[len(b"data: ") :]) for f in frames if f not in (DONE, KEEPALIVE)]


def test_visible_pieces_are_joined_by_blank_lines() -> None:
    renderer = ChatCompletionJSON(
        id="chatcmpl-1", created=7, transcript=markdown(), structured=False
    )
    for event in code_round("Computing.", '{"n":42}', RAW):
        renderer.feed(event)
    out = renderer.result()
    assert out["choices"][0]["message"]["content"] == (
        'Computing.\n\n```python\nprint(6 * 7)\n```\n\n```text\n42\n```\n\n{"n":42}'
    )
    # The upstream's own fields pass through; ours replace its id, time and usage.
    assert (out["id"], out["created"], out["system_fingerprint"]) == ("chatcmpl-1", 7, "fp_1")
    assert out["usage"] == USAGE
    assert out["code_interpreter"]["container_id"] == "cntr_1"
    assert [r["code"] for r in out["code_interpreter"]["executions"]] == [RUN.code]


def test_structured_output_is_only_the_final_message() -> None:
    renderer = ChatCompletionJSON(
        id="chatcmpl-1", created=7, transcript=markdown(), structured=True
    )
    for event in code_round("Computing.", '{"n":42}', RAW):
        renderer.feed(event)
    assert renderer.result()["choices"][0]["message"]["content"] == '{"n":42}'

    stream = ChatCompletionSSE(
        id="chatcmpl-1",
        created=7,
        model="gpt-test",
        transcript=markdown(),
        structured=True,
        include_usage=False,
    )
    frames = [f for e in code_round("Computing.", '{"n":42}', None) for f in stream.feed(e)]
    deltas = [c["choices"][0]["delta"] for c in chunks(frames)]
    assert deltas == [
        {"role": "assistant", "content": "", "refusal": None},
        {"content": '{"n":42}'},
        {},
    ]
    assert frames.count(KEEPALIVE) == 2 and frames[-1] == DONE


def test_stream_frames_in_order() -> None:
    renderer = ChatCompletionSSE(
        id="chatcmpl-1",
        created=7,
        model="gpt-test",
        transcript=Transcript("none", lambda saved: ""),
        structured=False,
        include_usage=True,
    )
    call = ClientCall(
        "call_w",
        "get_weather",
        '{"city":"Oslo"}',
        {
            "id": "call_w",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
        },
    )
    events: list[Event] = [
        RoundStarted(0, "gpt-test-2025"),
        RefusalDelta("No."),
        MessageDone(0, None, "No.", True, "tool_calls", None, None),
        call,
        Done("tool_calls", None, USAGE, [], None),
    ]
    frames = [f for e in events for f in renderer.feed(e)]
    assert frames[-1] == DONE
    body = chunks(frames)
    assert {c["model"] for c in body} == {"gpt-test-2025"}
    assert [c["choices"][0]["delta"] for c in body[:-2]] == [
        {"role": "assistant", "content": "", "refusal": None},
        {"refusal": "No."},
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_w",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                }
            ]
        },
    ]
    assert body[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert body[-1]["choices"] == [] and body[-1]["usage"] == USAGE
    assert renderer.reply() == {
        "role": "assistant",
        "content": None,
        "tool_calls": [call.raw],
    }
