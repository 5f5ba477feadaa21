"""Runs with the unchanged OpenAI SDK, on a real server without a sandbox: function tools
through `requires_action`, the run's options as the upstream receives them, limits, errors,
one active run per thread, expiry, shutdown, and a second process on the same database."""

import json
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from proxy.app import create_app
from proxy.settings import Settings
from tests.assistants import (
    AUTH,
    SDK_WARNINGS,
    WEATHER,
    Recorder,
    collapsed,
    error,
    run_status,
    wait_for,
)
from tests.conftest import DATABASES
from tests.proxy.conftest import sdk
from tests.servers import run_server
from tests.upstream import Error, ScriptedUpstream, completion, tool_call

pytestmark = [*SDK_WARNINGS, pytest.mark.parametrize("database_url", DATABASES, indirect=True)]


def test_function_tool_round_trip(client: openai.OpenAI, upstream: ScriptedUpstream) -> None:
    upstream.push(
        completion(tool_calls=[tool_call("get_weather", '{"city": "Paris"}', "call_w")]),
        completion("It is sunny in Paris.", prompt_tokens=40, completion_tokens=7),
    )
    assistant = client.beta.assistants.create(model="gpt-test", tools=[WEATHER])
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "Weather?"}])
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=20
    )
    assert run.status == "requires_action" and run.required_action is not None
    [call] = run.required_action.submit_tool_outputs.tool_calls
    assert (call.id, call.function.name, call.function.arguments) == (
        "call_w",
        "get_weather",
        '{"city": "Paris"}',
    )
    # No interpreter on this assistant: the model was not offered it.
    assert [t["function"]["name"] for t in upstream.requests[0]["tools"]] == ["get_weather"]
    assert "code interpreter" not in str(upstream.requests[0]["messages"])
    with pytest.raises(openai.BadRequestError) as exc:
        client.beta.threads.runs.submit_tool_outputs(
            run.id, thread_id=thread.id, tool_outputs=[{"tool_call_id": "call_x", "output": "?"}]
        )
    assert "call_w" in error(exc, 400)["message"]
    with pytest.raises(openai.BadRequestError) as exc:
        client.beta.threads.messages.create(thread.id, role="user", content="Hurry")
    assert f"while a run {run.id} is active" in error(exc, 400)["message"]

    done = client.beta.threads.runs.submit_tool_outputs_and_poll(
        run_id=run.id,
        thread_id=thread.id,
        tool_outputs=[{"tool_call_id": "call_w", "output": "sunny, 24 C"}],
        poll_interval_ms=20,
    )
    assert done.status == "completed" and done.required_action is None
    assert done.usage is not None and done.usage.total_tokens == 15 + 47
    assert upstream.requests[1]["messages"][-2:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_w",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_w", "content": "sunny, 24 C"},
    ]
    steps = client.beta.threads.runs.steps.list(run.id, thread_id=thread.id, order="asc").data
    assert [(s.type, s.status) for s in steps] == [
        ("tool_calls", "completed"),
        ("message_creation", "completed"),
    ]
    function = steps[0].step_details.tool_calls[0]  # type: ignore[union-attr]
    assert function.type == "function" and function.function.output == "sunny, 24 C"
    answer = client.beta.threads.messages.list(thread.id).data[0]
    assert answer.content[0].text.value == "It is sunny in Paris."  # type: ignore[union-attr]
    assert (answer.run_id, answer.assistant_id) == (run.id, assistant.id)
    with pytest.raises(openai.BadRequestError) as exc:
        client.beta.threads.runs.submit_tool_outputs(
            run.id, thread_id=thread.id, tool_outputs=[{"tool_call_id": "call_w", "output": "x"}]
        )
    assert error(exc, 400)["message"] == 'Runs in status "completed" do not accept tool outputs.'

    # The next run of the thread sees the function call and its output.
    upstream.push(completion("Still sunny."))
    client.beta.threads.runs.create_and_poll(
        thread_id=thread.id,
        assistant_id=assistant.id,
        additional_messages=[{"role": "user", "content": "And now?"}],
        poll_interval_ms=20,
    )
    assert [m["role"] for m in upstream.requests[2]["messages"]] == [
        "user",
        "assistant",
        "tool",
        "assistant",
        "user",
    ]


def test_function_round_trip_streamed(client: openai.OpenAI, upstream: ScriptedUpstream) -> None:
    upstream.push(
        completion("Let me check.", tool_calls=[tool_call("get_weather", '{"city": "Oslo"}')]),
        completion("Snow in Oslo."),
    )
    assistant = client.beta.assistants.create(model="gpt-test", tools=[WEATHER])
    second = Recorder()

    class Submitter(Recorder):
        """Submits the outputs from its `requires_action` event, as OpenAI's docs do."""

        def on_event(self, event: Any) -> None:
            super().on_event(event)
            if event.event == "thread.run.requires_action":
                calls = event.data.required_action.submit_tool_outputs.tool_calls
                with client.beta.threads.runs.submit_tool_outputs_stream(
                    thread_id=event.data.thread_id,
                    run_id=event.data.id,
                    tool_outputs=[{"tool_call_id": c.id, "output": "snow"} for c in calls],
                    event_handler=second,
                ) as stream:
                    stream.until_done()

    first = Submitter()
    with client.beta.threads.create_and_run_stream(
        assistant_id=assistant.id,
        thread={"messages": [{"role": "user", "content": "Weather in Oslo?"}]},
        event_handler=first,
    ) as stream:
        stream.until_done()
    assert collapsed(first.events) == [
        "thread.created",
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
        "thread.run.requires_action",
    ]
    assert first.tool_calls == ["function"] and first.text == "Let me check."
    assert second.events[:3] == [
        "thread.run.step.completed",
        "thread.run.queued",
        "thread.run.in_progress",
    ]
    assert second.events[-1] == "thread.run.completed" and second.text == "Snow in Oslo."
    assert second.get_final_run().status == "completed"


def test_run_options_reach_the_upstream(client: openai.OpenAI, upstream: ScriptedUpstream) -> None:
    upstream.push(completion('{"ok": true}'))
    assistant = client.beta.assistants.create(
        model="gpt-test", instructions="Be brief.", tools=[WEATHER], top_p=0.9
    )
    thread = client.beta.threads.create(
        messages=[{"role": "user", "content": f"old {i}"} for i in range(3)]
    )
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread.id,
        assistant_id=assistant.id,
        model="gpt-other",
        additional_instructions="Answer in JSON.",
        additional_messages=[{"role": "user", "content": "new"}],
        temperature=0.2,
        response_format={"type": "json_object"},
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        parallel_tool_calls=False,
        truncation_strategy={"type": "last_messages", "last_messages": 2},
        max_completion_tokens=500,
        metadata={"job": "1"},
        poll_interval_ms=20,
    )
    assert run.status == "completed"
    assert (run.model, run.instructions, run.temperature, run.top_p) == (
        "gpt-other",
        "Be brief.\n\nAnswer in JSON.",
        0.2,
        0.9,
    )
    assert run.truncation_strategy is not None and run.truncation_strategy.last_messages == 2
    sent = upstream.requests[0]
    assert sent["model"] == "gpt-other" and sent["temperature"] == 0.2 and sent["top_p"] == 0.9
    assert sent["response_format"] == {"type": "json_object"}
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert sent["parallel_tool_calls"] is False and sent["max_completion_tokens"] == 500
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief.\n\nAnswer in JSON."},
        {"role": "user", "content": "old 2"},
        {"role": "user", "content": "new"},
    ]
    assert len(client.beta.threads.messages.list(thread.id).data) == 5  # `new` was added
    assert client.beta.threads.runs.update(
        run.id, thread_id=thread.id, metadata={"job": "2"}
    ).metadata == {"job": "2"}
    assert [r.id for r in client.beta.threads.runs.list(thread.id)] == [run.id]


def test_limits_and_upstream_errors_end_runs(
    client: openai.OpenAI, upstream: ScriptedUpstream
) -> None:
    assistant = client.beta.assistants.create(model="gpt-test")
    thread = client.beta.threads.create()

    def run() -> Any:
        return client.beta.threads.runs.create_and_poll(
            thread_id=thread.id,
            assistant_id=assistant.id,
            additional_messages=[{"role": "user", "content": "Go"}],
            poll_interval_ms=20,
        )

    cut = completion("It was a long", completion_tokens=256)
    cut["choices"][0]["finish_reason"] = "length"
    upstream.push(cut)
    incomplete = run()
    assert incomplete.status == "incomplete" and incomplete.incomplete_details is not None
    assert incomplete.incomplete_details.reason == "max_completion_tokens"
    assert incomplete.usage is not None and incomplete.usage.completion_tokens == 256
    message = client.beta.threads.messages.list(thread.id, run_id=incomplete.id).data[0]
    assert message.status == "incomplete" and message.incomplete_details is not None
    assert message.incomplete_details.reason == "max_tokens"

    upstream.push(
        Error(429, {"error": {"message": "Slow down", "type": "rate", "param": None, "code": None}})
    )
    limited = run()
    assert limited.status == "failed" and limited.last_error is not None
    assert (
        limited.last_error.code == "rate_limit_exceeded"
        and "Slow down" in limited.last_error.message
    )
    upstream.push(
        Error(500, {"error": {"message": "Boom", "type": "x", "param": None, "code": None}})
    )
    broken = run()
    assert broken.status == "failed" and broken.last_error is not None
    assert broken.last_error.code == "server_error" and broken.failed_at is not None
    upstream.push(completion("Fine again."))
    assert run().status == "completed"  # a failed run releases its thread


def test_one_active_run_per_thread(client: openai.OpenAI, upstream: ScriptedUpstream) -> None:
    upstream.push(completion(tool_calls=[tool_call("get_weather", '{"city": "Rome"}', "call_r")]))
    assistant = client.beta.assistants.create(model="gpt-test", tools=[WEATHER])
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "Rome?"}])
    first = client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id)
    assert first.status == "queued"
    # Queued, in progress or waiting for tool outputs: the run holds its thread.
    with pytest.raises(openai.BadRequestError) as exc:
        client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id)
    assert error(exc, 400)["message"] == (
        f"Thread {thread.id} already has an active run {first.id}."
    )
    wait_for(run_status(client, thread.id, first.id), lambda r: r.status == "requires_action")
    with pytest.raises(openai.BadRequestError) as exc:
        client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id)
    assert "already has an active run" in error(exc, 400)["message"]
    assert len(client.beta.threads.runs.list(thread.id).data) == 1  # the refused ones are nowhere

    # Cancelled at once, with its waiting step; the thread is free again.
    cancelled = client.beta.threads.runs.cancel(first.id, thread_id=thread.id)
    assert cancelled.status == "cancelled" and cancelled.cancelled_at is not None
    [step] = client.beta.threads.runs.steps.list(first.id, thread_id=thread.id).data
    assert step.status == "cancelled"
    with pytest.raises(openai.BadRequestError) as exc:
        client.beta.threads.runs.cancel(first.id, thread_id=thread.id)
    assert error(exc, 400)["message"] == "Cannot cancel run with status 'cancelled'."
    upstream.push(completion("Sunny."))
    done = client.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=20
    )
    assert done.status == "completed" and done.started_at is not None


def test_a_run_waiting_for_outputs_expires(
    serve: Callable[..., str], upstream: ScriptedUpstream
) -> None:
    client = sdk(serve(run_heartbeat_interval=0.1, run_action_timeout=1))
    assistant = client.beta.assistants.create(model="gpt-test", tools=[WEATHER])
    upstream.push(completion(tool_calls=[tool_call("get_weather", '{"city": "Rome"}')]))
    left = client.beta.threads.create_and_run(
        assistant_id=assistant.id, thread={"messages": [{"role": "user", "content": "Rome?"}]}
    )
    expired = wait_for(run_status(client, left.thread_id, left.id), lambda r: r.status == "expired")
    assert expired.required_action is None
    [step] = client.beta.threads.runs.steps.list(left.id, thread_id=left.thread_id).data
    assert step.status == "expired" and step.expired_at is not None


def test_shutdown_mid_run_fails_the_run_and_frees_the_thread(
    make_settings: Callable[..., Settings], upstream: ScriptedUpstream
) -> None:
    settings = make_settings(upstream_base_url=upstream.url + "/v1")
    upstream.hold = True  # the model is still thinking when the service stops
    upstream.push(completion("Too late."))
    with run_server(create_app(settings)) as url:
        client = sdk(url)
        assistant = client.beta.assistants.create(model="gpt-test")
        run = client.beta.threads.create_and_run(
            assistant_id=assistant.id, thread={"messages": [{"role": "user", "content": "Hi"}]}
        )
        wait_for(run_status(client, run.thread_id, run.id), lambda r: r.status == "in_progress")
    upstream.hold = False
    with run_server(create_app(settings)) as url:
        client = sdk(url)
        stopped = client.beta.threads.runs.retrieve(run.id, thread_id=run.thread_id)
        assert stopped.status == "failed" and stopped.last_error is not None
        assert "shut down" in stopped.last_error.message
        upstream.script.clear()
        upstream.push(completion("Back."))
        again = client.beta.threads.runs.create_and_poll(
            thread_id=run.thread_id, assistant_id=assistant.id, poll_interval_ms=20
        )
        assert again.status == "completed"


def test_another_process_reads_and_cancels_a_run(
    serve: Callable[..., str], upstream: ScriptedUpstream
) -> None:
    """Two API processes on one database: the one that did not start the run answers for it
    and cancels it (the driving process sees the cancellation at its next heartbeat)."""
    first = sdk(serve(run_heartbeat_interval=0.1))
    second = sdk(serve(run_heartbeat_interval=0.1))
    upstream.hold = True  # still thinking when the other process cancels the run
    upstream.push(completion("Too slow."))
    assistant = first.beta.assistants.create(model="gpt-test")
    run = first.beta.threads.create_and_run(
        assistant_id=assistant.id, thread={"messages": [{"role": "user", "content": "Hi"}]}
    )
    seen = wait_for(run_status(second, run.thread_id, run.id), lambda r: r.status == "in_progress")
    assert seen.assistant_id == assistant.id
    asked = second.beta.threads.runs.cancel(run.id, thread_id=run.thread_id)
    assert asked.status == "cancelling"
    ended = wait_for(run_status(second, run.thread_id, run.id), lambda r: r.status == "cancelled")
    assert ended.cancelled_at is not None
    assert first.beta.threads.runs.retrieve(run.id, thread_id=run.thread_id).status == "cancelled"
    upstream.hold = False


def test_a_run_outlives_a_stream_its_client_left(
    client: openai.OpenAI, upstream: ScriptedUpstream
) -> None:
    upstream.hold = True
    upstream.push(completion("Still answered."))
    assistant = client.beta.assistants.create(model="gpt-test")
    url = str(client.base_url).rstrip("/") + "/threads/runs"
    body = {
        "assistant_id": assistant.id,
        "thread": {"messages": [{"role": "user", "content": "Hi"}]},
        "stream": True,
    }
    with httpx.stream("POST", url, json=body, headers=AUTH, timeout=30) as response:
        lines = response.iter_lines()
        while next(lines) != "event: thread.run.created":
            pass
        run = json.loads(next(lines).removeprefix("data: "))
    # The client is gone before the model answered; the run goes on.
    upstream.hold = False
    done = wait_for(
        run_status(client, run["thread_id"], run["id"]), lambda r: r.status == "completed"
    )
    answer = client.beta.threads.messages.list(done.thread_id).data[0]
    assert answer.content[0].text.value == "Still answered."  # type: ignore[union-attr]
