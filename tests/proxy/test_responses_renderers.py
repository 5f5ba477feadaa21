"""The Responses renderers as pure folds: engine events in, what a Responses client sees out."""

from typing import Any

from executor.api import ExecutionResult, RichOutput
from proxy.coderunner import Run, SavedFile
from proxy.errors import UpstreamError
from proxy.events import (
    CallFinished,
    CallStarted,
    ClientCall,
    CodeDelta,
    CodeDone,
    Done,
    Event,
    Failed,
    Heartbeat,
    MessageDone,
    RefusalDelta,
    RoundFinished,
    RoundStarted,
    TextDelta,
)
from proxy.jsonutil import loads
from proxy.renderers.responses import CitedFile, Head, ResponseJSON, ResponseSSE
from proxy.streaming import KEEPALIVE

PNG = "iVBORw0KGgo="
RUN = Run(
    id="exec_1",
    code="make()",
    language="python",
    result=ExecutionResult(
        session_id="cntr_1",
        language="python",
        stdout="made\n",
        results=[RichOutput(kind="display_data", data={"image/png": PNG, "text/plain": "<Fig>"})],
    ),
    files=[SavedFile("file-a", "out.csv", 10, "/mnt/data/out.csv", "cfile_out")],
    images=[SavedFile("file-b", "image_1.png", 8, None, "cfile_img")],
)
USAGE = {
    "prompt_tokens": 30,
    "completion_tokens": 9,
    "total_tokens": 39,
    "prompt_tokens_details": {"cached_tokens": 4},
}
TEXT = "Saved [out.csv](sandbox:/mnt/data/out.csv) and [old](sandbox:/mnt/data/old.txt)."


def head(include: bool = False, **body: Any) -> Head:
    return Head(
        id="resp_1",
        created_at=1,
        model="gpt-test",
        body={"model": "gpt-test", **body},
        include_outputs=include,
        known={"/mnt/data/old.txt": CitedFile("cntr_1", "cfile_old", "old.txt")},
    )


def turn(final: str = TEXT, finish: str = "stop") -> list[Event]:
    return [
        RoundStarted(0, "gpt-test-2025"),
        TextDelta("Let me "),
        TextDelta("see."),
        MessageDone(0, "Let me see.", None, False, "tool_calls", None, None),
        Heartbeat(),
        CallStarted("ci_1", "call_1", "cntr_1"),
        CodeDelta("ci_1", RUN.code),
        CodeDone("ci_1", RUN.code, "python"),
        Heartbeat(),
        CallFinished("ci_1", RUN, None),
        RoundFinished(0),
        RoundStarted(1, "gpt-test-2025"),
        TextDelta(final),
        MessageDone(1, final, None, True, finish, None, None),
        Done(finish, final, USAGE, [], "cntr_1"),
    ]


def frames(renderer: ResponseSSE, events: list[Event]) -> list[bytes]:
    return [frame for event in events for frame in renderer.feed(event)]


def parse(raw: list[bytes]) -> list[dict[str, Any]]:
    out = []
    for frame in raw:
        if frame == KEEPALIVE:
            continue
        kind, data = frame.decode().rstrip("\n").split("\n")
        event = loads(data.removeprefix("data: "))
        assert kind == f"event: {event['type']}"
        out.append(event)
    return out


def test_the_object_has_every_item_in_order() -> None:
    renderer = ResponseJSON(head(include=True))
    for event in turn():
        renderer.feed(event)
    response = renderer.result()
    assert response["status"] == "completed" and response["model"] == "gpt-test-2025"
    first, call, last = response["output"]
    assert first["content"][0]["text"] == "Let me see." and first["status"] == "completed"
    assert call == {
        "id": "ci_1",
        "type": "code_interpreter_call",
        "status": "completed",
        "code": "make()",
        "container_id": "cntr_1",
        "outputs": [
            {"type": "logs", "logs": "made"},
            {"type": "image", "url": f"data:image/png;base64,{PNG}"},
        ],
    }
    [part] = last["content"]
    assert part["text"] == TEXT
    image, written, old = part["annotations"]
    assert (image["file_id"], image["start_index"], image["end_index"]) == ("cfile_img", 0, 0)
    assert (written["file_id"], written["filename"]) == ("cfile_out", "out.csv")
    assert TEXT[written["start_index"] : written["end_index"]] == "sandbox:/mnt/data/out.csv"
    assert TEXT[old["start_index"] : old["end_index"]] == "sandbox:/mnt/data/old.txt"
    assert old["file_id"] == "cfile_old"
    assert response["usage"] == {
        "input_tokens": 30,
        "input_tokens_details": {"cached_tokens": 4},
        "output_tokens": 9,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 39,
    }


def test_outputs_are_null_unless_included() -> None:
    renderer = ResponseJSON(head(include=False))
    for event in turn():
        renderer.feed(event)
    assert renderer.result()["output"][1]["outputs"] is None


def test_a_stop_for_length_is_incomplete() -> None:
    renderer = ResponseJSON(head())
    for event in turn(finish="length"):
        renderer.feed(event)
    response = renderer.result()
    assert response["status"] == "incomplete"
    assert response["incomplete_details"] == {"reason": "max_output_tokens"}
    assert response["completed_at"] is None


def test_the_stream_in_openais_order() -> None:
    renderer = ResponseSSE(head(include=True))
    raw = frames(renderer, turn())
    assert raw.count(KEEPALIVE) == 2
    events = parse(raw)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
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
        "response.output_text.annotation.added",
        "response.output_text.annotation.added",
        "response.output_text.annotation.added",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    added = [e for e in events if e["type"] == "response.output_item.added"]
    assert [e["output_index"] for e in added] == [0, 1, 2]
    assert added[1]["item"]["container_id"] == "cntr_1" and added[1]["item"]["code"] == ""
    assert events[0]["response"]["model"] == "gpt-test-2025"
    assert events[0]["response"]["output"] == [] and events[0]["response"]["usage"] is None
    notes = [e for e in events if e["type"] == "response.output_text.annotation.added"]
    assert [e["annotation_index"] for e in notes] == [0, 1, 2]
    assert events[-1]["response"]["usage"]["total_tokens"] == 39


def test_nothing_is_sent_before_the_upstream_answers() -> None:
    renderer = ResponseSSE(head())
    assert renderer.feed(Heartbeat()) == []
    assert not renderer.started


def test_a_failure_after_the_start_is_an_error_event() -> None:
    renderer = ResponseSSE(head())
    error = UpstreamError(
        502, {"error": {"message": "gone", "type": "server_error", "param": None, "code": "x"}}, {}
    )
    events = parse(frames(renderer, [RoundStarted(0, None), TextDelta("Hi"), Failed(error)]))
    assert events[-2] == {
        "type": "error",
        "code": "x",
        "message": "gone",
        "param": None,
        "sequence_number": len(events) - 2,
    }
    failed = events[-1]
    assert failed["type"] == "response.failed" and failed["sequence_number"] == len(events) - 1
    assert failed["response"]["status"] == "failed"
    assert failed["response"]["error"] == {"code": "server_error", "message": "gone"}
    assert failed["response"]["completed_at"] is None


def test_client_calls_and_refusals() -> None:
    renderer = ResponseSSE(head())
    events = parse(
        frames(
            renderer,
            [
                RoundStarted(0, None),
                RefusalDelta("No."),
                MessageDone(0, None, "No.", True, "tool_calls", None, None),
                ClientCall("call_w", "get_weather", '{"city":"Oslo"}', {}),
                Done("tool_calls", None, USAGE, [], None),
            ],
        )
    )
    kinds = [e["type"] for e in events]
    assert kinds[2:] == [
        "response.output_item.added",
        "response.content_part.added",
        "response.refusal.delta",
        "response.refusal.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    message, call = events[-1]["response"]["output"]
    assert message["content"] == [{"type": "refusal", "refusal": "No."}]
    assert call["type"] == "function_call" and call["id"].startswith("fc_")
    assert (call["call_id"], call["name"], call["arguments"], call["status"]) == (
        "call_w",
        "get_weather",
        '{"city":"Oslo"}',
        "completed",
    )
