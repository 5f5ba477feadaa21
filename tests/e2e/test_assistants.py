"""The Assistants API with the code interpreter, end to end: the OpenAI SDK as client, the
real sandbox, a scripted upstream."""

import io
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.assistants import SDK_WARNINGS, Recorder, collapsed, run_status, wait_for
from tests.e2e.conftest import REPO, Stack
from tests.proxy.conftest import KEY_A
from tests.upstream import code_call, completion

pytestmark = SDK_WARNINGS

CI = [{"type": "code_interpreter"}]
CHART = (
    "import pandas as pd, matplotlib.pyplot as plt\n"
    "sales = pd.read_csv('/mnt/data/sales.csv')\n"
    "totals = sales.groupby('region')['revenue'].sum()\n"
    "totals.to_csv('/mnt/data/totals.csv')\n"
    "print(open('/mnt/data/notes.txt').read())\n"
    "totals.plot.bar()\n"
    "plt.show()"
)


def steps_of(client: openai.OpenAI, run: Any) -> list[Any]:
    return client.beta.threads.runs.steps.list(run.id, thread_id=run.thread_id, order="asc").data


def test_a_code_run_from_start_to_end(stack: Stack) -> None:
    stack.upstream.push(
        completion("Let me compute it.", tool_calls=[code_call("print(6 * 7)", call_id="call_c")]),
        completion("6 times 7 is 42.", prompt_tokens=30, completion_tokens=8),
    )
    client = stack.client()
    assistant = client.beta.assistants.create(
        model="gpt-test", instructions="You are a math tutor.", tools=CI
    )
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "6 times 7?"}])
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=20
    )
    assert run.status == "completed" and run.last_error is None
    assert run.usage is not None and (run.usage.prompt_tokens, run.usage.total_tokens) == (40, 53)
    assert run.started_at is not None and run.completed_at is not None

    said, code, answer = steps_of(client, run)
    assert (said.type, code.type, answer.type) == (
        "message_creation",
        "tool_calls",
        "message_creation",
    )
    assert all(s.status == "completed" and s.run_id == run.id for s in (said, code, answer))
    [call] = code.step_details.tool_calls
    assert (call.id, call.type, call.code_interpreter.input) == (
        "call_c",
        "code_interpreter",
        "print(6 * 7)",
    )
    assert [(o.type, o.logs) for o in call.code_interpreter.outputs] == [("logs", "42")]
    assert answer.usage is not None and answer.usage.total_tokens == 38

    messages = client.beta.threads.messages.list(thread.id, order="asc").data
    assert [(m.role, m.content[0].text.value) for m in messages] == [
        ("user", "6 times 7?"),
        ("assistant", "Let me compute it."),
        ("assistant", "6 times 7 is 42."),
    ]
    assert said.step_details.message_creation.message_id == messages[1].id
    assert {m.run_id for m in messages[1:]} == {run.id}
    first, second = stack.upstream.requests
    assert first["messages"][0]["content"].startswith("You are a math tutor.\n\nYou have a code")
    assert second["messages"][-1] == {
        "role": "tool",
        "tool_call_id": "call_c",
        "content": "[stdout]\n42\n",
    }


def test_streaming_with_an_event_handler(stack: Stack) -> None:
    stack.upstream.push(
        completion("Computing.", tool_calls=[code_call("total = sum(range(10))\nprint(total)")]),
        completion("The sum is 45."),
    )
    client = stack.client()
    assistant = client.beta.assistants.create(model="gpt-test", tools=CI)
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "Sum 0..9"}])
    handler = Recorder()
    with client.beta.threads.runs.stream(
        thread_id=thread.id, assistant_id=assistant.id, event_handler=handler
    ) as stream:
        stream.until_done()
    assert collapsed(handler.events) == [
        "thread.run.created",
        "thread.run.queued",
        "thread.run.in_progress",
        "thread.run.step.created",
        "thread.run.step.in_progress",
        "thread.message.created",
        "thread.message.in_progress",
        "thread.message.delta",
        "thread.message.completed",
        "thread.run.step.completed",
        "thread.run.step.created",
        "thread.run.step.in_progress",
        "thread.run.step.delta",
        "thread.run.step.completed",
        "thread.run.step.created",
        "thread.run.step.in_progress",
        "thread.message.created",
        "thread.message.in_progress",
        "thread.message.delta",
        "thread.message.completed",
        "thread.run.step.completed",
        "thread.run.completed",
    ]
    assert handler.text == "Computing.The sum is 45."
    assert handler.texts_done == ["Computing.", "The sum is 45."]
    assert handler.tool_calls == ["code_interpreter"]
    assert handler.code == "total = sum(range(10))\nprint(total)"
    assert [(o.type, o.logs) for o in handler.outputs] == [("logs", "45")]
    final = handler.get_final_run()
    assert final.status == "completed" and final.usage is not None
    steps = handler.get_final_run_steps()
    assert [s.type for s in steps] == ["message_creation", "tool_calls", "message_creation"]
    assert steps[1].step_details.tool_calls[0].code_interpreter.outputs[0].logs == "45"
    # What the stream showed is what is stored.
    assert [m.content[0].text.value for m in handler.get_final_messages()] == [
        m.content[0].text.value
        for m in client.beta.threads.messages.list(thread.id, order="asc").data[1:]
    ]


def test_raw_stream_framing(stack: Stack) -> None:
    stack.upstream.push(
        completion(tool_calls=[code_call("import time; time.sleep(0.7); print('done')")]),
        completion("Done."),
    )
    client = stack.client()
    assistant = client.beta.assistants.create(model="gpt-test", tools=CI)
    response = httpx.post(
        f"{stack.url}/v1/threads/runs",
        json={
            "assistant_id": assistant.id,
            "thread": {"messages": [{"role": "user", "content": "Go"}]},
            "stream": True,
        },
        headers={"authorization": f"Bearer {KEY_A}", "openai-beta": "assistants=v2"},
        timeout=60,
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert ": keepalive\n\n" in response.text  # while the code sleeps
    blocks = [b for b in response.text.split("\n\n") if b and not b.startswith(":")]
    for block in blocks:
        event, data = block.split("\n")
        assert event.startswith("event: ") and data.startswith("data: ")
    assert blocks[0].startswith("event: thread.created\ndata: {")
    assert blocks[-2].startswith("event: thread.run.completed\n")
    assert blocks[-1] == "event: done\ndata: [DONE]"


def test_files_in_and_out(stack: Stack, tmp_path: Path) -> None:
    client = stack.client()
    sales = client.files.create(file=REPO / "examples" / "sales.csv", purpose="assistants")
    notes = client.files.create(file=("notes.txt", io.BytesIO(b"Q3 figures")), purpose="assistants")
    stack.upstream.push(
        completion(tool_calls=[code_call(CHART)]),
        completion("Totals are in [totals.csv](sandbox:/mnt/data/totals.csv), chart above."),
    )
    assistant = client.beta.assistants.create(
        model="gpt-test", tools=CI, tool_resources={"code_interpreter": {"file_ids": [sales.id]}}
    )
    assert assistant.tool_resources is not None
    thread = client.beta.threads.create(
        messages=[
            {
                "role": "user",
                "content": "Chart the revenue per region.",
                "attachments": [{"file_id": notes.id, "tools": [{"type": "code_interpreter"}]}],
            }
        ]
    )
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=20
    )
    assert run.status == "completed", run.last_error
    first = stack.upstream.requests[0]["messages"]
    assert (
        "/mnt/data/sales.csv" in first[0]["content"]
        and "/mnt/data/notes.txt" in first[0]["content"]
    )
    assert first[1]["content"].endswith(
        "[Attached files, in the code interpreter's sandbox: /mnt/data/notes.txt]"
    )

    [call] = steps_of(client, run)[0].step_details.tool_calls
    logs, image = call.code_interpreter.outputs
    assert logs.type == "logs" and "Q3 figures" in logs.logs
    assert image.type == "image" and image.image.file_id.startswith("file-")

    answer = client.beta.threads.messages.list(thread.id).data[0]
    shown, text = answer.content
    assert shown.type == "image_file" and shown.image_file.file_id == image.image.file_id
    [link] = text.text.annotations
    value = text.text.value
    assert link.type == "file_path" and link.text == "sandbox:/mnt/data/totals.csv"
    assert value[link.start_index : link.end_index] == link.text

    csv = client.files.retrieve(link.file_path.file_id)
    assert (csv.filename, csv.purpose) == ("totals.csv", "assistants_output")
    assert client.files.content(csv.id).read().decode().splitlines()[0] == "region,revenue"
    png = client.files.content(image.image.file_id).read()
    assert png.startswith(b"\x89PNG")


def test_state_lives_across_runs_of_a_thread(stack: Stack) -> None:
    client = stack.client()
    assistant = client.beta.assistants.create(model="gpt-test", tools=CI)
    thread = client.beta.threads.create()

    def ask(question: str) -> Any:
        return client.beta.threads.runs.create_and_poll(
            thread_id=thread.id,
            assistant_id=assistant.id,
            additional_messages=[{"role": "user", "content": question}],
            poll_interval_ms=20,
        )

    stack.upstream.push(
        completion(tool_calls=[code_call("x = 41\nopen('/mnt/data/kept.txt', 'w').write('kept')")]),
        completion("Stored x."),
        completion(tool_calls=[code_call("print(x + 1, open('/mnt/data/kept.txt').read())")]),
        completion("x + 1 is 42."),
    )
    ask("Store x = 41.")
    second = ask("What is x + 1?")
    [call] = steps_of(client, second)[0].step_details.tool_calls
    assert call.code_interpreter.outputs[0].logs == "42 kept"
    # The model saw the first run's code and result, in place.
    roles = [m["role"] for m in stack.upstream.requests[2]["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "assistant", "user"]


def test_a_new_sandbox_after_expiry_gets_the_files_back(make_stack: Any) -> None:
    stack = make_stack(executor={"session_idle_timeout": 1, "reaper_interval": 0.2})
    client = stack.client()
    assistant = client.beta.assistants.create(model="gpt-test", tools=CI)
    stack.upstream.push(
        completion(
            tool_calls=[code_call("kept = 1\nopen('/mnt/data/notes.txt', 'w').write('saved')")]
        ),
        completion("Saved."),
    )
    first = client.beta.threads.create_and_run_poll(
        assistant_id=assistant.id,
        thread={"messages": [{"role": "user", "content": "Save notes."}]},
        poll_interval_ms=20,
    )
    sessions = f"{stack.url}/v1/code_interpreter/sessions"
    auth = {"authorization": f"Bearer {KEY_A}"}
    wait_for(lambda: httpx.get(sessions, headers=auth).json()["data"], lambda d: d == [])
    stack.upstream.push(
        completion(tool_calls=[code_call("print(open('/mnt/data/notes.txt').read())\nkept")]),
        completion("The notes survived; the variable did not."),
    )
    second = client.beta.threads.runs.create_and_poll(
        thread_id=first.thread_id,
        assistant_id=assistant.id,
        additional_messages=[{"role": "user", "content": "Still there?"}],
        poll_interval_ms=20,
    )
    assert second.status == "completed"
    assert "has expired" in stack.upstream.requests[2]["messages"][0]["content"]
    [call] = steps_of(client, second)[0].step_details.tool_calls
    logs = call.code_interpreter.outputs[0].logs
    assert "saved" in logs and "NameError" in logs


def test_cancel_interrupts_running_code(stack: Stack) -> None:
    client = stack.client()
    assistant = client.beta.assistants.create(model="gpt-test", tools=CI)
    stack.upstream.push(
        completion(tool_calls=[code_call("state = 'kept'")]),
        completion("Kept it."),
        completion(tool_calls=[code_call("import time\ntime.sleep(120)")]),
    )
    first = client.beta.threads.create_and_run_poll(
        assistant_id=assistant.id,
        thread={"messages": [{"role": "user", "content": "Keep a state."}]},
        poll_interval_ms=20,
    )
    run = client.beta.threads.runs.create(thread_id=first.thread_id, assistant_id=assistant.id)

    def code_running() -> list[Any]:
        return steps_of(client, run)

    wait_for(code_running, lambda steps: bool(steps and steps[0].step_details.tool_calls))
    cancelled = client.beta.threads.runs.cancel(run.id, thread_id=run.thread_id)
    assert cancelled.status in ("cancelling", "cancelled")
    ended = wait_for(run_status(client, run.thread_id, run.id), lambda r: r.status == "cancelled")
    assert ended.cancelled_at is not None
    [step] = steps_of(client, run)
    assert step.status == "cancelled" and step.cancelled_at is not None

    # The thread is free again, its sandbox too, and the kernel kept its state.
    stack.upstream.push(completion(tool_calls=[code_call("print(state)")]), completion("Kept."))
    again = client.beta.threads.runs.create_and_poll(
        thread_id=run.thread_id, assistant_id=assistant.id, poll_interval_ms=20
    )
    [call] = steps_of(client, again)[0].step_details.tool_calls
    assert call.code_interpreter.outputs[0].logs == "kept"


def sessions(stack: Stack) -> list[Any]:
    auth = {"authorization": f"Bearer {KEY_A}"}
    data: list[Any] = httpx.get(f"{stack.url}/v1/code_interpreter/sessions", headers=auth).json()[
        "data"
    ]
    return data


def test_a_token_limit_stops_the_run_before_its_code(stack: Stack) -> None:
    client = stack.client()
    assistant = client.beta.assistants.create(model="gpt-test", tools=CI)
    stack.upstream.push(completion(tool_calls=[code_call("print('ran')")], prompt_tokens=300))
    run = client.beta.threads.create_and_run_poll(
        assistant_id=assistant.id,
        thread={"messages": [{"role": "user", "content": "Go"}]},
        max_prompt_tokens=256,
        poll_interval_ms=20,
    )
    assert run.status == "incomplete" and run.incomplete_details is not None
    assert run.incomplete_details.reason == "max_prompt_tokens"
    assert run.usage is not None and run.usage.prompt_tokens == 300
    assert steps_of(client, run) == [] and sessions(stack) == []  # nothing ran


def test_deleting_a_thread_closes_its_sandbox(stack: Stack) -> None:
    client = stack.client()
    assistant = client.beta.assistants.create(model="gpt-test", tools=CI)
    stack.upstream.push(completion(tool_calls=[code_call("x = 1")]), completion("Set."))
    run = client.beta.threads.create_and_run_poll(
        assistant_id=assistant.id,
        thread={"messages": [{"role": "user", "content": "Set x"}]},
        poll_interval_ms=20,
    )
    assert len(sessions(stack)) == 1
    assert client.beta.threads.delete(run.thread_id).deleted
    assert sessions(stack) == []
    with pytest.raises(openai.NotFoundError):
        client.beta.threads.runs.retrieve(run.id, thread_id=run.thread_id)
