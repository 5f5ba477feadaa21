"""The Assistants renderer as a pure fold: engine events in, `thread.*` frames and the objects
to store out. A fixed clock; no I/O."""

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
    Heartbeat,
    MessageDone,
    RoundFinished,
    RoundStarted,
    TextDelta,
)
from proxy.jsonutil import loads
from proxy.renderers.assistants import RunRenderer

NOW = 1_700_000_000
PNG = "iVBORw0KGgo="
CHART = Run(
    id="exec_1",
    code="df.plot()",
    language="python",
    result=ExecutionResult(
        session_id="cntr_1",
        language="python",
        stdout="saved\n",
        results=[
            RichOutput(kind="display_data", data={"image/png": PNG, "text/plain": "<Figure>"})
        ],
    ),
    files=[SavedFile("file-csv", "totals.csv", 20, "/mnt/data/totals.csv")],
    images=[SavedFile("file-png", "image_1.png", 8)],
)
USAGE = {"prompt_tokens": 30, "completion_tokens": 9, "total_tokens": 39}
CALL = {"id": "call_f", "type": "function", "function": {"name": "f", "arguments": "{}"}}


def new_run(**fields: Any) -> dict[str, Any]:
    return {
        "id": "run_1",
        "object": "thread.run",
        "thread_id": "thread_1",
        "assistant_id": "asst_1",
        "status": "queued",
        "started_at": None,
        "usage": None,
        **fields,
    }


def renderer(**fields: Any) -> RunRenderer:
    return RunRenderer(
        new_run(**fields),
        files={"/mnt/data/old.txt": "file-old"},
        action_timeout=600,
        clock=lambda: NOW,
    )


def frames_of(out: list[bytes]) -> list[tuple[str, dict[str, Any]]]:
    parsed = []
    for frame in out:
        event, data = frame.decode().removesuffix("\n\n").split("\n")
        parsed.append((event.removeprefix("event: "), loads(data.removeprefix("data: "))))
    return parsed


def fold(r: RunRenderer, events: list[Event]) -> list[tuple[str, dict[str, Any]]]:
    out = r.start()
    for event in events:
        out += r.feed(event)
    return frames_of(out)


def chart_run(final: str) -> list[Event]:
    return [
        RoundStarted(0, "gpt-test"),
        TextDelta("Plot"),
        TextDelta("ting."),
        MessageDone(0, "Plotting.", None, False, "tool_calls", USAGE, None),
        CallStarted("ci_1", "call_1", "cntr_1"),
        CodeDelta("ci_1", "df.plot()"),
        CodeDone("ci_1", "df.plot()", "python"),
        Heartbeat(),
        CallFinished("ci_1", CHART, None),
        RoundFinished(0),
        RoundStarted(1, "gpt-test"),
        TextDelta(final),
        MessageDone(1, final, None, True, "stop", USAGE, None),
        Done("stop", final, {**USAGE, "total_tokens": 78}, [], "cntr_1"),
    ]


def test_a_code_run_becomes_steps_messages_and_events() -> None:
    final = "See sandbox:/mnt/data/totals.csv and sandbox:/mnt/data/old.txt."
    frames = fold(renderer(), chart_run(final))
    assert [name for name, _ in frames] == [
        "thread.run.in_progress",
        "thread.run.step.created",
        "thread.run.step.in_progress",
        "thread.message.created",
        "thread.message.in_progress",
        "thread.message.delta",
        "thread.message.delta",
        "thread.message.completed",
        "thread.run.step.completed",
        "thread.run.step.created",
        "thread.run.step.in_progress",
        "thread.run.step.delta",  # the call
        "thread.run.step.delta",  # its code
        "thread.run.step.delta",  # its outputs
        "thread.run.step.completed",
        "thread.run.step.created",
        "thread.run.step.in_progress",
        "thread.message.created",
        "thread.message.in_progress",
        "thread.message.delta",  # the image shown by the code opens the next message
        "thread.message.delta",
        "thread.message.delta",  # annotations
        "thread.message.completed",
        "thread.run.step.completed",
        "thread.run.completed",
    ]
    deltas = [d for name, d in frames if name == "thread.run.step.delta"]
    assert [d["delta"]["step_details"]["tool_calls"][0] for d in deltas] == [
        {
            "index": 0,
            "id": "call_1",
            "type": "code_interpreter",
            "code_interpreter": {"input": "", "outputs": []},
        },
        {"index": 0, "type": "code_interpreter", "code_interpreter": {"input": "df.plot()"}},
        {
            "index": 0,
            "type": "code_interpreter",
            "code_interpreter": {
                "outputs": [
                    {"index": 0, "type": "logs", "logs": "saved"},
                    {"index": 1, "type": "image", "image": {"file_id": "file-png"}},
                ]
            },
        },
    ]
    code_step = [d for name, d in frames if name == "thread.run.step.completed"][1]
    assert code_step["usage"] is None  # the round's tokens went to its message's step
    assert code_step["step_details"]["tool_calls"][0]["code_interpreter"]["outputs"][1] == {
        "type": "image",
        "image": {"file_id": "file-png"},
    }
    message = [d for name, d in frames if name == "thread.message.completed"][1]
    image, text = message["content"]
    assert image == {"type": "image_file", "image_file": {"file_id": "file-png", "detail": "auto"}}
    assert text["text"]["value"] == final
    assert [(a["text"], a["file_path"]["file_id"]) for a in text["text"]["annotations"]] == [
        ("sandbox:/mnt/data/totals.csv", "file-csv"),
        ("sandbox:/mnt/data/old.txt", "file-old"),  # trailing full stop left out
    ]
    for a in text["text"]["annotations"]:
        assert final[a["start_index"] : a["end_index"]] == a["text"]
    run = frames[-1][1]
    assert (run["status"], run["completed_at"], run["started_at"]) == ("completed", NOW, NOW)
    assert run["usage"] == {"prompt_tokens": 30, "completion_tokens": 9, "total_tokens": 78}


def test_changes_are_what_to_store_before_sending() -> None:
    r = renderer()
    r.start()
    assert [o["object"] for o in r.take_changes()] == ["thread.run"]
    events = chart_run("Done.")
    for event in events[:5]:
        r.feed(event)
    stored = r.take_changes()
    assert [(o["object"], o["status"]) for o in stored] == [
        ("thread.run.step", "completed"),
        ("thread.message", "completed"),
        ("thread.run.step", "in_progress"),
    ]
    r.feed(events[5])
    assert r.take_changes() == []  # a piece of code is sent, not stored
    r.feed(events[6])
    [step] = r.take_changes()  # the whole code is stored before it runs
    assert step["step_details"]["tool_calls"][0]["code_interpreter"]["input"] == "df.plot()"
    assert r.take_changes() == []


def test_client_calls_leave_the_run_waiting_for_outputs() -> None:
    r = renderer()
    frames = fold(
        r,
        [
            RoundStarted(0, None),
            MessageDone(0, None, None, True, "tool_calls", USAGE, None),
            ClientCall("call_f", "f", "{}", CALL),
            Done("tool_calls", None, USAGE, [], None),
        ],
    )
    assert [name for name, _ in frames] == [
        "thread.run.in_progress",
        "thread.run.step.created",
        "thread.run.step.in_progress",
        "thread.run.step.delta",
        "thread.run.requires_action",
    ]
    run = frames[-1][1]
    assert run["required_action"] == {
        "type": "submit_tool_outputs",
        "submit_tool_outputs": {"tool_calls": [CALL]},
    }
    assert run["expires_at"] == NOW + 600
    [step] = [o for o in r.take_changes() if o["object"] == "thread.run.step"]
    assert step["status"] == "in_progress" and step["usage"]["total_tokens"] == 39
    assert step["step_details"]["tool_calls"] == [
        {
            "id": "call_f",
            "type": "function",
            "function": {"name": "f", "arguments": "{}", "output": None},
        }
    ]


def test_a_failure_closes_what_is_open() -> None:
    r = renderer(usage={"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6})
    fold(r, [RoundStarted(0, None), TextDelta("Half")])
    error = UpstreamError(429, {"error": {"message": "Slow down"}}, {})
    frames = frames_of(r.fail(error))
    assert [name for name, _ in frames] == [
        "thread.message.incomplete",
        "thread.run.step.failed",
        "thread.run.failed",
    ]
    message, step, run = (data for _, data in frames)
    assert message["incomplete_details"] == {"reason": "run_failed"}
    assert message["content"][0]["text"]["value"] == "Half"
    assert step["last_error"] == {
        "code": "rate_limit_exceeded",
        "message": "The model failed: Slow down",
    }
    assert run["last_error"] == step["last_error"] and run["failed_at"] == NOW
    assert run["usage"]["total_tokens"] == 6  # what earlier stretches of the run used


def test_cancel_and_token_limits() -> None:
    r = renderer()
    fold(r, [RoundStarted(0, None), TextDelta("Wai")])
    frames = frames_of(r.cancel())
    assert [(name, data["status"]) for name, data in frames] == [
        ("thread.message.incomplete", "incomplete"),
        ("thread.run.step.cancelled", "cancelled"),
        ("thread.run.cancelled", "cancelled"),
    ]
    assert frames[0][1]["incomplete_details"] == {"reason": "run_cancelled"}

    r = renderer()
    fold(r, [RoundStarted(0, None), TextDelta("Too long")])
    frames = frames_of(r.incomplete("max_completion_tokens", USAGE))
    assert [name for name, _ in frames] == [
        "thread.message.incomplete",
        "thread.run.step.completed",
        "thread.run.incomplete",
    ]
    assert frames[0][1]["incomplete_details"] == {"reason": "max_tokens"}
    run = frames[-1][1]
    assert run["incomplete_details"] == {"reason": "max_completion_tokens"}
    assert run["usage"]["total_tokens"] == 39
