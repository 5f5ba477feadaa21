"""Assistants, threads and messages with the unchanged OpenAI SDK, on a real server without
a sandbox: objects and their lists, tenants, images for the model, and bad input."""

import base64
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from tests.assistants import (
    AUTH,
    SDK_WARNINGS,
    WEATHER,
    error,
)
from tests.conftest import DATABASES
from tests.proxy.conftest import KEY_B, sdk
from tests.upstream import ScriptedUpstream, completion

pytestmark = [*SDK_WARNINGS, pytest.mark.parametrize("database_url", DATABASES, indirect=True)]


def test_assistants_are_created_listed_modified_and_deleted(client: openai.OpenAI) -> None:
    made = [
        client.beta.assistants.create(
            model="gpt-test",
            name=f"Tutor {i}",
            instructions="Answer with code.",
            tools=[{"type": "code_interpreter"}, WEATHER],
            metadata={"n": str(i)},
            temperature=0.5,
        )
        for i in range(3)
    ]
    first = made[0]
    assert first.id.startswith("asst_") and first.object == "assistant"
    assert [t.type for t in first.tools] == ["code_interpreter", "function"]
    assert (first.temperature, first.top_p, first.response_format) == (0.5, 1.0, "auto")
    assert client.beta.assistants.retrieve(first.id) == first

    newest = client.beta.assistants.list(limit=2)
    assert [a.id for a in newest.data] == [made[2].id, made[1].id] and newest.has_more
    older = client.beta.assistants.list(limit=2, after=made[1].id)
    assert [a.id for a in older.data] == [first.id] and not older.has_more
    assert [a.id for a in client.beta.assistants.list(order="asc", before=made[2].id)] == [
        first.id,
        made[1].id,
    ]
    assert [a.id for a in client.beta.assistants.list(limit=1, before=first.id)] == [made[1].id]
    # Iterating a page fetches the next ones, with `after` cursors.
    assert [a.id for a in client.beta.assistants.list(limit=1)] == [a.id for a in made[::-1]]
    assert [a.id for a in client.beta.assistants.list(limit=1, order="asc")] == [a.id for a in made]

    changed = client.beta.assistants.update(first.id, name="Renamed", tools=[])
    assert (changed.name, changed.tools, changed.instructions) == (
        "Renamed",
        [],
        first.instructions,
    )
    assert client.beta.assistants.retrieve(first.id).name == "Renamed"
    gone = client.beta.assistants.delete(first.id)
    assert (gone.id, gone.deleted, gone.object) == (first.id, True, "assistant.deleted")
    with pytest.raises(openai.NotFoundError) as exc:
        client.beta.assistants.retrieve(first.id)
    assert error(exc, 404)["message"] == f"No assistant found with id '{first.id}'."


def test_threads_and_messages(client: openai.OpenAI) -> None:
    thread = client.beta.threads.create(
        messages=[
            {"role": "user", "content": "Hello"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Look at this"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                ],
            },
        ],
        metadata={"user": "jane"},
    )
    assert thread.id.startswith("thread_") and thread.metadata == {"user": "jane"}
    listed = client.beta.threads.messages.list(thread.id, order="asc")
    hello, look = listed.data
    assert hello.content[0].type == "text" and hello.content[0].text.value == "Hello"
    assert [p.type for p in look.content] == ["text", "image_url"]
    assert (hello.role, hello.status, hello.thread_id, hello.run_id) == (
        "user",
        "completed",
        thread.id,
        None,
    )
    added = client.beta.threads.messages.create(thread.id, role="user", content="More")
    assert client.beta.threads.messages.list(thread.id, limit=1).data[0].id == added.id
    changed = client.beta.threads.messages.update(
        added.id, thread_id=thread.id, metadata={"k": "v"}
    )
    assert changed.metadata == {"k": "v"}
    assert client.beta.threads.messages.retrieve(added.id, thread_id=thread.id).metadata == {
        "k": "v"
    }
    assert client.beta.threads.messages.delete(added.id, thread_id=thread.id).deleted
    assert [m.id for m in client.beta.threads.messages.list(thread.id, order="asc")] == [
        hello.id,
        look.id,
    ]
    assert client.beta.threads.update(thread.id, metadata={"user": "joe"}).metadata == {
        "user": "joe"
    }
    assert client.beta.threads.retrieve(thread.id).metadata == {"user": "joe"}
    assert client.beta.threads.delete(thread.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.beta.threads.retrieve(thread.id)
    with pytest.raises(openai.NotFoundError):
        client.beta.threads.messages.retrieve(hello.id, thread_id=thread.id)
    assert client.beta.threads.create().id.startswith("thread_")  # no body at all


def test_tenants_see_only_their_own(client: openai.OpenAI, upstream: ScriptedUpstream) -> None:
    upstream.push(completion("Hi A."))
    assistant = client.beta.assistants.create(model="gpt-test")
    run = client.beta.threads.create_and_run_poll(
        assistant_id=assistant.id,
        thread={"messages": [{"role": "user", "content": "Hi"}]},
        poll_interval_ms=20,
    )
    message = client.beta.threads.messages.list(run.thread_id).data[0]
    step = client.beta.threads.runs.steps.list(run.id, thread_id=run.thread_id).data[0]
    other = sdk(str(client.base_url).removesuffix("/v1/"), KEY_B)
    calls: list[Callable[[], Any]] = [
        lambda: other.beta.assistants.retrieve(assistant.id),
        lambda: other.beta.assistants.update(assistant.id, name="mine"),
        lambda: other.beta.assistants.delete(assistant.id),
        lambda: other.beta.threads.retrieve(run.thread_id),
        lambda: other.beta.threads.delete(run.thread_id),
        lambda: other.beta.threads.messages.list(run.thread_id),
        lambda: other.beta.threads.messages.retrieve(message.id, thread_id=run.thread_id),
        lambda: other.beta.threads.messages.create(run.thread_id, role="user", content="x"),
        lambda: other.beta.threads.runs.retrieve(run.id, thread_id=run.thread_id),
        lambda: other.beta.threads.runs.list(run.thread_id),
        lambda: other.beta.threads.runs.cancel(run.id, thread_id=run.thread_id),
        lambda: other.beta.threads.runs.create(thread_id=run.thread_id, assistant_id=assistant.id),
        lambda: other.beta.threads.runs.steps.retrieve(
            step.id, thread_id=run.thread_id, run_id=run.id
        ),
    ]
    for call in calls:
        with pytest.raises(openai.NotFoundError):
            call()
    assert other.beta.assistants.list().data == []
    # And theirs do not mix with A's.
    mine = other.beta.assistants.create(model="gpt-test")
    assert [a.id for a in client.beta.assistants.list()] == [assistant.id]
    with pytest.raises(openai.NotFoundError):
        client.beta.threads.create_and_run(assistant_id=mine.id)
    assert client.beta.threads.retrieve(run.thread_id).id == run.thread_id


def test_bad_input_is_a_clear_400(client: openai.OpenAI, serve: Callable[..., str]) -> None:
    assistant = client.beta.assistants.create(model="gpt-test", tools=[WEATHER])
    thread = client.beta.threads.create()
    cases: list[tuple[Callable[[], Any], str, str | None]] = [
        (
            lambda: client.beta.assistants.create(
                model="gpt-test", tools=[{"type": "file_search"}]
            ),
            "'file_search' tool is not supported",
            "tools[0].type",
        ),
        (
            lambda: client.beta.assistants.create(
                model="gpt-test",
                tool_resources={"file_search": {"vector_store_ids": ["vs_1"]}},
            ),
            "'file_search' tool resource is not supported",
            "tool_resources.file_search",
        ),
        (
            lambda: client.beta.threads.messages.create(
                thread.id,
                role="user",
                content="x",
                attachments=[{"file_id": "file-1", "tools": [{"type": "file_search"}]}],
            ),
            "'file_search' tool is not supported",
            "messages.attachments[0].tools",
        ),
        (
            lambda: client.beta.threads.runs.create(
                thread_id=thread.id, assistant_id=assistant.id, tools=[{"type": "file_search"}]
            ),
            "'file_search' tool is not supported",
            "tools[0].type",
        ),
        (
            lambda: client.beta.threads.runs.create(
                thread_id=thread.id, assistant_id=assistant.id, tool_choice={"type": "file_search"}
            ),
            "'file_search' tool is not supported",
            "tool_choice.type",
        ),
        (
            lambda: client.beta.assistants.create(
                model="gpt-test",
                tools=[{"type": "function", "function": {"name": "code_interpreter"}}],
            ),
            "reserved for the code interpreter",
            "tools[0].function.name",
        ),
        (
            lambda: client.beta.assistants.create(model="gpt-test", temperature=3),
            "Invalid 'temperature'",
            "temperature",
        ),
        (
            lambda: client.beta.threads.runs.create(
                thread_id=thread.id, assistant_id=assistant.id, max_prompt_tokens=10
            ),
            "Invalid 'max_prompt_tokens'",
            "max_prompt_tokens",
        ),
        (
            lambda: client.beta.threads.runs.create(
                thread_id=thread.id,
                assistant_id=assistant.id,
                truncation_strategy={"type": "last_messages"},
            ),
            "'truncation_strategy.last_messages'",
            "truncation_strategy.last_messages",
        ),
        (
            lambda: client.beta.threads.runs.create(
                thread_id=thread.id,
                assistant_id=assistant.id,
                tool_choice={"type": "function", "function": {"name": "nope"}},
            ),
            "no function named 'nope'",
            "tool_choice.function.name",
        ),
        (
            lambda: client.beta.threads.runs.create(
                thread_id=thread.id,
                assistant_id=assistant.id,
                tool_choice={"type": "code_interpreter"},
            ),
            "no 'code_interpreter' tool",
            "tool_choice",
        ),
        (
            lambda: client.beta.threads.messages.create(thread.id, role="user", content=[]),
            "non-empty array",
            "messages.content",
        ),
        (
            lambda: client.beta.assistants.create(model="gpt-test", extra_body={"colour": "red"}),
            "Invalid 'colour'",
            "colour",
        ),
    ]
    for call, message, param in cases:
        with pytest.raises(openai.BadRequestError) as exc:
            call()
        body = error(exc, 400)
        assert message in body["message"], body
        assert body["param"] == param, body

    missing: list[tuple[Callable[[], Any], str]] = [
        (
            lambda: client.beta.threads.runs.create(thread_id=thread.id, assistant_id="asst_x"),
            "assistant",
        ),
        (
            lambda: client.beta.threads.runs.create(
                thread_id="thread_x", assistant_id=assistant.id
            ),
            "thread",
        ),
        (lambda: client.beta.threads.messages.retrieve("msg_x", thread_id=thread.id), "message"),
        (lambda: client.beta.threads.runs.retrieve("run_x", thread_id=thread.id), "run"),
        (lambda: client.beta.threads.runs.steps.list("run_x", thread_id=thread.id), "run"),
    ]
    for call, kind in missing:
        with pytest.raises(openai.NotFoundError) as exc:
            call()
        assert error(exc, 404)["message"].startswith(f"No {kind} found with id")
    with pytest.raises(openai.NotFoundError) as exc:
        client.beta.assistants.create(
            model="gpt-test", tool_resources={"code_interpreter": {"file_ids": ["file-nope"]}}
        )
    assert error(exc, 404)["message"] == "No such File object: file-nope"

    # A run with the interpreter needs an execution service; this server has none.
    coder = client.beta.assistants.create(model="gpt-test", tools=[{"type": "code_interpreter"}])
    with pytest.raises(openai.InternalServerError) as exc:
        client.beta.threads.runs.create(thread_id=thread.id, assistant_id=coder.id)
    assert exc.value.status_code == 503
    assert client.beta.threads.runs.list(thread.id).data == []


def test_beta_header(client: openai.OpenAI) -> None:
    url = str(client.base_url).rstrip("/")
    response = httpx.get(f"{url}/assistants", headers={**AUTH, "openai-beta": "assistants=v1"})
    assert response.status_code == 400
    assert response.json()["error"]["message"] == (
        "The Assistants API v1 is not served here. Please try again with the header "
        "'OpenAI-Beta: assistants=v2'."
    )
    assert httpx.get(f"{url}/assistants", headers=AUTH).status_code == 200
    plain = {"authorization": AUTH["authorization"]}
    assert httpx.get(f"{url}/assistants", headers=plain).json()["object"] == "list"


def test_images_and_steps(client: openai.OpenAI, upstream: ScriptedUpstream) -> None:
    png = b"\x89PNG\r\n\x1a\nfake"
    image = client.files.create(file=("cat.png", png), purpose="vision")
    upstream.push(completion("A cat."))
    assistant = client.beta.assistants.create(model="gpt-test")
    run = client.beta.threads.create_and_run_poll(
        assistant_id=assistant.id,
        thread={
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is this?"},
                        {"type": "image_file", "image_file": {"file_id": image.id}},
                    ],
                }
            ]
        },
        poll_interval_ms=20,
    )
    assert upstream.requests[0]["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {
                    "type": "image_url",
                    "image_url": {
                        "url": "data:image/png;base64," + base64.b64encode(png).decode(),
                        "detail": "auto",
                    },
                },
            ],
        }
    ]
    [step] = client.beta.threads.runs.steps.list(run.id, thread_id=run.thread_id).data
    assert (
        client.beta.threads.runs.steps.retrieve(step.id, thread_id=run.thread_id, run_id=run.id)
        == step
    )
    assert step.step_details.type == "message_creation"
    with pytest.raises(openai.NotFoundError):
        client.beta.threads.runs.steps.retrieve("step_x", thread_id=run.thread_id, run_id=run.id)
