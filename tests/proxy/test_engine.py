"""The loop engine on its own: its events, in order, for a scripted model.

The upstream is the scripted OpenAI-compatible server on loopback, reached through the real
upstream client; the executor is the real in-process service over the fake sandbox of
`tests/executor/fakes.py` (the sandbox is the outside world here); storage is a real SQLite
file. No renderer is involved: the tests read the events a surface would fold.
"""

import asyncio
import base64
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from executor.api import ExecutionResult, RichOutput
from executor.service import ExecutorService
from proxy.app import create_app
from proxy.coderunner import CodeRunner, Run, SavedFile
from proxy.deps import Services
from proxy.engine import Engine, Turn
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
    Image,
    Logs,
    MessageDone,
    RefusalDelta,
    RoundFinished,
    RoundStarted,
    TextDelta,
)
from proxy.model import ChatCompletionsModel
from proxy.settings import Settings
from tests.executor.fakes import FakeBackend, FakeSandbox
from tests.executor.fakes import make_settings as executor_settings
from tests.upstream import Error, ScriptedUpstream, code_call, completion, tool_call

TENANT = "tenant-engine"
USER = [{"role": "user", "content": "What is 6 times 7?"}]
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
}


@dataclass
class Rig:
    services: Services
    executor: ExecutorService
    backend: FakeBackend
    upstream: ScriptedUpstream

    def engine(self, *, settings: Settings | None = None, **turn: Any) -> Engine:
        turn.setdefault("messages", USER)
        turn.setdefault("options", {"model": "gpt-test"})
        return Engine(
            settings=settings or self.services.settings,
            model=ChatCompletionsModel(self.services.upstream),
            runner=CodeRunner(self.services, self.executor, TENANT, source="chat"),
            turn=Turn(**turn),
        )

    async def sandbox(self) -> FakeSandbox:
        """The first sandbox, once the engine has started one."""
        while not self.backend.sandboxes:  # noqa: ASYNC110 (the engine runs in another task)
            await asyncio.sleep(0.01)
        return self.backend.sandboxes[0]


@pytest.fixture
async def rig(
    tmp_path: Path, upstream: ScriptedUpstream, make_settings: Callable[..., Settings]
) -> AsyncIterator[Rig]:
    backend = FakeBackend(tmp_path / "sandboxes")
    executor = ExecutorService(executor_settings(), backend=backend)
    settings = make_settings(
        upstream_base_url=upstream.url + "/v1", keepalive_interval=0.05, max_rounds=3
    )
    app = create_app(settings, executor=executor)
    async with app.router.lifespan_context(app):
        yield Rig(app.state.services, executor, backend, upstream)


async def collect(engine: Engine) -> list[Event]:
    return [event async for event in engine.events()]


def kinds(events: list[Event]) -> list[str]:
    """Event class names, heartbeats left out (how many there are depends on timing)."""
    return [type(e).__name__ for e in events if not isinstance(e, Heartbeat)]


def only(events: list[Event], kind: type[Any]) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


async def test_one_round(rig: Rig) -> None:
    rig.upstream.push(
        completion("Let me run it.", tool_calls=[code_call("print(6 * 7)", call_id="call_a")]),
        completion("It is 42."),
    )
    engine = rig.engine()
    events = await collect(engine)
    assert kinds(events) == [
        "RoundStarted",
        "TextDelta",
        "MessageDone",
        "CallStarted",
        "CodeDelta",
        "CodeDone",
        "CallFinished",
        "RoundFinished",
        "RoundStarted",
        "TextDelta",
        "MessageDone",
        "Done",
    ]
    assert only(events, Heartbeat) == []  # not asked for: not streaming
    first, second = only(events, MessageDone)
    assert (first.round, first.text, first.final) == (0, "Let me run it.", False)
    assert (second.round, second.text, second.final) == (1, "It is 42.", True)
    assert second.raw is not None and second.raw["object"] == "chat.completion"
    [started] = only(events, CallStarted)
    [done_code] = only(events, CodeDone)
    [finished] = only(events, CallFinished)
    [done] = only(events, Done)
    assert started.item_id.startswith("ci_") and started.call_id == "call_a"
    assert started.container_id == done.container_id == engine.runner.session_id
    assert started.container_id is not None and started.container_id.startswith("cntr_")
    assert (done_code.item_id, done_code.code, done_code.language) == (
        started.item_id,
        "print(6 * 7)",
        "python",
    )
    [delta] = only(events, CodeDelta)
    assert (delta.item_id, delta.delta) == (started.item_id, done_code.code)
    assert finished.item_id == started.item_id and finished.status == "completed"
    assert finished.run is not None and finished.run.result.stdout == "42\n"
    assert finished.outputs == [Logs("42")]
    assert (done.finish_reason, done.text) == ("stop", "It is 42.")
    assert [m["role"] for m in done.hidden] == ["assistant", "tool"]
    assert done.hidden[0]["tool_calls"][0]["id"] == "call_a"
    assert done.hidden[1] == {"role": "tool", "tool_call_id": "call_a", "content": "[stdout]\n42\n"}
    assert rig.upstream.requests[1]["messages"][-2:] == done.hidden


async def test_streamed_deltas_arrive_in_order(rig: Rig) -> None:
    rig.upstream.push(
        completion("Hello there, world.", tool_calls=[code_call("print(1)")]),
        completion("Bye for now."),
    )
    events = await collect(rig.engine(stream=True))
    assert kinds(events) == [
        "RoundStarted",
        "TextDelta",
        "TextDelta",
        "TextDelta",
        "MessageDone",
        "CallStarted",
        "CodeDelta",
        "CodeDone",
        "CallFinished",
        "RoundFinished",
        "RoundStarted",
        "TextDelta",
        "TextDelta",
        "TextDelta",
        "MessageDone",
        "Done",
    ]
    deltas = [e.text for e in only(events, TextDelta)]
    assert "".join(deltas) == "Hello there, world.Bye for now."
    first, second = only(events, MessageDone)
    assert (first.text, second.text) == ("Hello there, world.", "Bye for now.")
    assert first.raw is None  # a stream has no whole answer to pass on
    assert only(events, RoundStarted)[0].model == "gpt-test"
    assert rig.upstream.requests[0]["stream_options"] == {"include_usage": True}


async def test_heartbeats_only_while_code_runs(rig: Rig) -> None:
    rig.upstream.push(
        completion(tool_calls=[code_call("#fake: sleep 0.3\nprint('slept')")]),
        completion("Done."),
    )
    events = await collect(rig.engine(stream=True))
    beats = [i for i, e in enumerate(events) if isinstance(e, Heartbeat)]
    assert beats
    code_done = next(i for i, e in enumerate(events) if isinstance(e, CodeDone))
    finished = next(i for i, e in enumerate(events) if isinstance(e, CallFinished))
    assert all(code_done < i < finished for i in beats)


async def test_several_rounds_keep_state_and_sum_usage(rig: Rig) -> None:
    rig.upstream.push(
        completion("Setting up.", tool_calls=[code_call("x = 40")]),
        completion(tool_calls=[code_call("x += 2")]),
        completion(tool_calls=[code_call("print(x)")], prompt_tokens=7, completion_tokens=1),
        completion("x is 42."),
    )
    events = await collect(rig.engine())
    runs = [e.run for e in only(events, CallFinished)]
    assert [r.result.stdout for r in runs] == ["", "", "42\n"]
    assert [e.round for e in only(events, RoundFinished)] == [0, 1, 2]
    assert [e.final for e in only(events, MessageDone)] == [False, False, False, True]
    [done] = only(events, Done)
    assert done.usage == {"prompt_tokens": 37, "completion_tokens": 16, "total_tokens": 53}
    assert [u.usage["total_tokens"] for u in only(events, MessageDone)] == [15, 15, 8, 15]
    assert len(done.hidden) == 6
    # One session for the whole turn.
    assert len({e.container_id for e in only(events, CallStarted)}) == 1


async def test_several_calls_in_one_round(rig: Rig) -> None:
    rig.upstream.push(
        completion(
            tool_calls=[
                code_call("a = 6", call_id="call_1"),
                code_call("print(a * 7)", call_id="call_2"),
            ]
        ),
        completion("42."),
    )
    events = await collect(rig.engine())
    started = only(events, CallStarted)
    finished = only(events, CallFinished)
    assert [s.call_id for s in started] == ["call_1", "call_2"]
    assert [f.item_id for f in finished] == [s.item_id for s in started]
    assert len({s.item_id for s in started}) == 2
    assert finished[1].run.result.stdout == "42\n"
    history = rig.upstream.requests[1]["messages"]
    assert [c["id"] for c in history[-3]["tool_calls"]] == ["call_1", "call_2"]
    assert [(m["role"], m["tool_call_id"]) for m in history[-2:]] == [
        ("tool", "call_1"),
        ("tool", "call_2"),
    ]
    assert len(rig.upstream.requests) == 2


async def test_client_calls_alone_are_handed_back_without_a_sandbox(rig: Rig) -> None:
    rig.upstream.push(
        completion(
            tool_calls=[
                tool_call("get_weather", '{"city": "Oslo"}', "call_w1"),
                tool_call("get_weather", '{"city": "Rome"}', "call_w2"),
            ]
        )
    )
    engine = rig.engine(client_tools=[WEATHER])
    events = await collect(engine)
    assert kinds(events) == [
        "RoundStarted",
        "MessageDone",
        "ClientCall",
        "ClientCall",
        "Done",
    ]
    calls = only(events, ClientCall)
    assert [(c.call_id, c.name, c.arguments) for c in calls] == [
        ("call_w1", "get_weather", '{"city": "Oslo"}'),
        ("call_w2", "get_weather", '{"city": "Rome"}'),
    ]
    [done] = only(events, Done)
    assert done.finish_reason == "tool_calls" and done.hidden == []
    assert done.container_id is None
    assert await rig.executor.list_sessions(TENANT) == []
    sent = rig.upstream.requests[0]
    assert [t["function"]["name"] for t in sent["tools"]] == ["get_weather", "code_interpreter"]


async def test_client_call_beside_code_is_asked_for_again(rig: Rig) -> None:
    rig.upstream.push(
        completion(
            tool_calls=[
                code_call("print(3)", call_id="call_code"),
                tool_call("get_weather", "{}", "call_early"),
            ]
        ),
        completion(tool_calls=[tool_call("get_weather", "{}", "call_late")]),
    )
    events = await collect(rig.engine(client_tools=[WEATHER]))
    assert [c.call_id for c in only(events, ClientCall)] == ["call_late"]
    assert only(events, CallFinished)[0].run.result.stdout == "3\n"
    history = rig.upstream.requests[1]["messages"]
    # Every tool call in the history has its answer: the early client call is not in it.
    assert [c["id"] for c in history[-2]["tool_calls"]] == ["call_code"]
    assert history[-1]["tool_call_id"] == "call_code"


async def test_round_limit_ends_with_a_round_without_the_interpreter(rig: Rig) -> None:
    settings = rig.services.settings.model_copy(update={"max_rounds": 1})
    rig.upstream.push(
        completion(tool_calls=[code_call("print(1)")]),
        # The model calls the interpreter anyway in the last round: it is not run.
        completion("Out of rounds.", tool_calls=[code_call("print(2)")]),
    )
    events = await collect(rig.engine(settings=settings))
    assert len(only(events, CallFinished)) == 1
    last = only(events, MessageDone)[-1]
    assert last.final and last.text == "Out of rounds."
    [done] = only(events, Done)
    assert done.finish_reason == "stop"
    assert "tools" in rig.upstream.requests[0]
    assert "tools" not in rig.upstream.requests[1] and "tool_choice" not in rig.upstream.requests[1]


async def test_forced_interpreter_is_forced_once(rig: Rig) -> None:
    rig.upstream.push(completion(tool_calls=[code_call("print(1)")]), completion("1."))
    await collect(rig.engine(tool_choice={"type": "code_interpreter"}))
    first, second = rig.upstream.requests
    assert first["tool_choice"] == {"type": "function", "function": {"name": "code_interpreter"}}
    assert second["tool_choice"] == "auto"


async def test_bad_arguments_become_tool_results(rig: Rig) -> None:
    rig.upstream.push(
        completion(tool_calls=[tool_call("code_interpreter", '{"language": "python"}', "c1")]),
        completion(tool_calls=[code_call("print(1)", language="cobol", call_id="c2")]),
        completion("Sorry."),
    )
    events = await collect(rig.engine())
    # Unreadable arguments: nothing to show, the model reads the error.
    assert rig.upstream.requests[1]["messages"][-1]["tool_call_id"] == "c1"
    assert '"code"' in rig.upstream.requests[1]["messages"][-1]["content"]
    # Readable code in an unknown language: shown, not run, the model reads why.
    [started] = only(events, CallStarted)
    assert started.call_id == "c2"
    [finished] = only(events, CallFinished)
    assert finished.run is None and finished.status == "failed"
    assert finished.error is not None and "cobol" in finished.error
    assert finished.outputs == [Logs(finished.error)]
    assert rig.upstream.requests[2]["messages"][-1]["content"] == f"[error] {finished.error}"
    assert only(events, Done)[0].text == "Sorry."


async def test_usage_sums_nested_details(rig: Rig) -> None:
    def with_details(reply: dict[str, Any], cached: int) -> Callable[[Any], dict[str, Any]]:
        reply["usage"]["prompt_tokens_details"] = {"cached_tokens": cached}
        return lambda _body: reply

    for stream in (False, True):
        rig.upstream.push(
            with_details(completion(tool_calls=[code_call("print(1)")]), 3),
            with_details(completion("1."), 4),
        )
        [done] = only(await collect(rig.engine(stream=stream)), Done)
        assert done.usage == {
            "prompt_tokens": 20,
            "completion_tokens": 10,
            "total_tokens": 30,
            "prompt_tokens_details": {"cached_tokens": 7},
        }


async def test_refusal_is_its_own_delta(rig: Rig) -> None:
    for stream in (False, True):
        rig.upstream.push(completion(refusal="I can't help with that."))
        events = await collect(rig.engine(stream=stream))
        assert [e.text for e in only(events, RefusalDelta)] == ["I can't help with that."]
        assert only(events, TextDelta) == []
        [message] = only(events, MessageDone)
        assert (message.text, message.refusal) == (None, "I can't help with that.")


async def test_files_written_are_reported_with_their_paths(rig: Rig) -> None:
    code = "with open(DATA_DIR + '/totals.csv', 'w') as f:\n    f.write('a,b\\n1,2\\n')"
    rig.upstream.push(completion(tool_calls=[code_call(code)]), completion("Saved."))
    events = await collect(rig.engine())
    [finished] = only(events, CallFinished)
    [saved] = finished.run.files
    assert (saved.path, saved.filename, saved.bytes) == ("/mnt/data/totals.csv", "totals.csv", 8)
    assert saved.file_id.startswith("file-")
    assert "/mnt/data/totals.csv (8 bytes)" in rig.upstream.requests[1]["messages"][-1]["content"]


async def test_upstream_error_before_code_ran(rig: Rig) -> None:
    limited = {
        "error": {
            "message": "Rate limit reached",
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    rig.upstream.push(Error(429, limited, {"retry-after": "7"}))
    events = await collect(rig.engine())
    assert kinds(events) == ["Failed"]
    [failed] = only(events, Failed)
    assert failed.error.body() == limited
    assert failed.error.headers == {"retry-after": "7"}


@pytest.mark.parametrize("stream", [False, True])
async def test_upstream_error_after_code_ran(rig: Rig, stream: bool) -> None:
    broke = {"error": {"message": "broke", "type": "server_error", "param": None, "code": None}}
    rig.upstream.push(completion(tool_calls=[code_call("print(1)")]), Error(500, broke))
    events = await collect(rig.engine(stream=stream))
    assert kinds(events)[-3:] == ["CallFinished", "RoundFinished", "Failed"]
    [failed] = only(events, Failed)
    assert failed.error.body() == broke
    # The code had side effects: a client must not retry the request.
    assert failed.error.headers["x-should-retry"] == "false"
    assert only(events, Done) == []


@pytest.mark.parametrize("stream", [False, True])
async def test_cancelling_cancels_the_code_and_frees_the_session(rig: Rig, stream: bool) -> None:
    rig.upstream.push(completion(tool_calls=[code_call("#fake: block\n")]))
    engine = rig.engine(stream=stream)
    seen: list[Event] = []

    async def consume() -> None:
        async for event in engine.events():
            seen.append(event)

    task = asyncio.create_task(consume())
    sandbox = await rig.sandbox()
    await sandbox.running.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sandbox.cancelled_runs == 1
    assert kinds(seen)[-1] == "CodeDone"  # the code showed; no CallFinished, no Done
    session_id = engine.runner.session_id
    assert session_id is not None
    assert (await rig.executor.get_session(TENANT, session_id)).status == "active"
    # The session serves the next request at once.
    rig.upstream.push(completion(tool_calls=[code_call("print('again')")]), completion("ok"))
    runner_engine = rig.engine()
    await runner_engine.runner.attach(session_id=session_id, file_ids=[])
    events = await collect(runner_engine)
    assert only(events, CallFinished)[0].run.result.stdout == "again\n"


def test_outputs_pair_displayed_images_with_their_files() -> None:
    png = base64.b64encode(b"\x89PNG fake").decode()
    jpeg = base64.b64encode(b"\xff\xd8 fake").decode()
    result = ExecutionResult(
        session_id="cntr_x",
        language="python",
        stdout="hi\n",
        results=[
            RichOutput(kind="display_data", data={"image/png": png, "text/plain": "<Figure>"}),
            RichOutput(kind="execute_result", data={"text/plain": "3"}),
            RichOutput(kind="display_data", data={"image/jpeg": jpeg}),
            # A third image over the file budget was not stored: it has no file to show.
            RichOutput(kind="display_data", data={"image/png": png}),
        ],
    )
    run = Run(
        id="exec_1",
        code="...",
        language="python",
        result=result,
        images=[SavedFile("file-a", "image_1.png", 9), SavedFile("file-b", "image_2.jpg", 7)],
    )
    finished = CallFinished("ci_1", run, None)
    assert finished.outputs == [
        Logs("hi\n3"),
        Image("file-a", "image_1.png", "image/png", png),
        Image("file-b", "image_2.jpg", "image/jpeg", jpeg),
    ]


async def test_without_the_interpreter_calls_of_its_name_are_the_clients(rig: Rig) -> None:
    """A surface may turn the interpreter off (a Responses request without the tool): no tool,
    no system note, and a call the model makes anyway is handed back, never run."""
    rig.upstream.push(completion(tool_calls=[code_call("print(1)", call_id="call_x")]))
    events = await collect(rig.engine(interpreter=False, client_tools=[WEATHER]))
    assert kinds(events) == ["RoundStarted", "MessageDone", "ClientCall", "Done"]
    [call] = only(events, ClientCall)
    assert (call.call_id, call.name) == ("call_x", "code_interpreter")
    assert only(events, Done)[0].finish_reason == "tool_calls"
    [sent] = rig.upstream.requests
    assert sent["messages"] == USER
    assert [t["function"]["name"] for t in sent["tools"]] == ["get_weather"]
    assert rig.backend.sandboxes == []
