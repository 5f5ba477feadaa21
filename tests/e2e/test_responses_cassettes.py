"""What codeproxy emits on the Responses API, against what OpenAI sent in real recordings.

Each test takes a recorded exchange (tests/cassettes, see SOURCES.md), scripts the upstream to
make the same code calls and say the same text, sends codeproxy the recorded request, and
compares the answer with the recording: the order of events, each event's and item's fields,
and the values that do not depend on who served it (code, logs the real sandbox printed, text,
citation spans, files). Reasoning items are the recorded model's own and have no counterpart
here; `phase` and `obfuscation` are optional fields codeproxy does not send.
"""

from pathlib import Path
from typing import Any

import httpx
import yaml

from proxy.jsonutil import loads
from tests.e2e.conftest import Stack
from tests.proxy.conftest import KEY_A
from tests.upstream import code_call, completion

CASSETTES = Path(__file__).parents[1] / "cassettes"
OPTIONAL = {"obfuscation", "phase"}
# Fields of OpenAI's `response` that every response object must have (spec `Response`).
REQUIRED = {
    "id",
    "object",
    "created_at",
    "error",
    "incomplete_details",
    "instructions",
    "model",
    "tools",
    "output",
    "parallel_tool_calls",
    "metadata",
    "tool_choice",
    "temperature",
    "top_p",
}


def interactions(name: str) -> list[dict[str, Any]]:
    data: dict[str, Any] = yaml.safe_load((CASSETTES / name).read_text())
    return list(data["interactions"])


def recorded_events(raw: str) -> list[dict[str, Any]]:
    events = []
    for block in raw.split("\n\n"):
        if not block.strip():
            continue
        kind, data = block.split("\n")
        event = loads(data.removeprefix("data: "))
        assert event["type"] == kind.removeprefix("event: ")
        events.append(event)
    return events


def ours(raw: str) -> list[dict[str, Any]]:
    return recorded_events("\n\n".join(b for b in raw.split("\n\n") if not b.startswith(":")))


def without_reasoning(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The recorded events with the reasoning items taken out and output indexes shifted."""
    reasoning = {
        e["output_index"]
        for e in events
        if e["type"] == "response.output_item.added" and e["item"]["type"] == "reasoning"
    }
    out = []
    for event in events:
        if "output_index" in event and event["output_index"] in reasoning:
            continue
        if "output_index" in event:
            shift = sum(1 for r in reasoning if r < event["output_index"])
            event = {**event, "output_index": event["output_index"] - shift}
        out.append(event)
    return out


def kinds(events: list[dict[str, Any]]) -> list[str]:
    """Event types, runs of deltas collapsed (how text is cut is the upstream's business)."""
    types = [e["type"] for e in events]
    return [t for i, t in enumerate(types) if not (i and t == types[i - 1] and "delta" in t)]


def keys(obj: dict[str, Any]) -> set[str]:
    return set(obj) - OPTIONAL


def check_item(mine: dict[str, Any], theirs: dict[str, Any]) -> None:
    assert keys(mine) == keys(theirs), (mine, theirs)
    assert mine["type"] == theirs["type"] and mine["status"] == theirs["status"]
    prefix = theirs["id"].split("_")[0] + "_"
    assert mine["id"].startswith(prefix)
    if theirs["type"] == "code_interpreter_call":
        assert mine["code"] == theirs["code"]
        assert mine["container_id"].startswith("cntr_")
        if theirs["outputs"] is None:
            assert mine["outputs"] is None
        else:
            assert sorted(o["type"] for o in mine["outputs"]) == sorted(
                o["type"] for o in theirs["outputs"]
            )
            logs = [o["logs"] for o in theirs["outputs"] if o["type"] == "logs"]
            assert [o["logs"] for o in mine["outputs"] if o["type"] == "logs"] == logs
            for image in (o for o in mine["outputs"] if o["type"] == "image"):
                assert image["url"].startswith("data:image/png;base64,")
    if theirs["type"] == "message":
        assert len(mine["content"]) == len(theirs["content"])
        for part, recorded in zip(mine["content"], theirs["content"], strict=True):
            assert keys(part) == keys(recorded)
            assert part["text"] == recorded["text"]
            check_annotations(part["annotations"], recorded["annotations"])


def check_annotations(mine: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> None:
    assert len(mine) == len(theirs)
    for annotation, recorded in zip(mine, theirs, strict=True):
        assert set(annotation) == set(recorded)
        assert annotation["file_id"].startswith("cfile_")
        assert annotation["container_id"].startswith("cntr_")
        assert (annotation["start_index"], annotation["end_index"]) == (
            recorded["start_index"],
            recorded["end_index"],
        )
        if recorded["start_index"] != recorded["end_index"]:
            assert annotation["filename"] == recorded["filename"]


def check_response(mine: dict[str, Any], theirs: dict[str, Any]) -> None:
    assert set(mine) >= REQUIRED
    # `completed_at` is newer than the 2025 recordings.
    assert set(mine) <= set(theirs) | {"usage", "completed_at"}, set(mine) - set(theirs)
    assert mine["status"] == theirs["status"] and mine["object"] == "response"
    assert mine["id"].startswith("resp_")
    if theirs["usage"] is None:
        assert mine["usage"] is None
    else:
        assert set(mine["usage"]) == set(theirs["usage"])


def check_stream(mine: list[dict[str, Any]], recorded: list[dict[str, Any]]) -> None:
    theirs = without_reasoning(recorded)
    assert kinds(mine) == kinds(theirs)
    assert [e["sequence_number"] for e in mine] == list(range(len(mine)))
    by_kind: dict[str, dict[str, Any]] = {}
    for event in theirs:
        by_kind.setdefault(event["type"], event)
    for event in mine:
        recorded_event = by_kind[event["type"]]
        assert keys(event) == keys(recorded_event), event["type"]
    done = [e for e in mine if e["type"] == "response.output_item.done"]
    recorded_done = [e for e in theirs if e["type"] == "response.output_item.done"]
    for event, recorded_event in zip(done, recorded_done, strict=True):
        assert event["output_index"] == recorded_event["output_index"]
        check_item(event["item"], recorded_event["item"])
    check_response(mine[0]["response"], theirs[0]["response"])
    check_response(mine[-1]["response"], theirs[-1]["response"])
    assert len(mine[-1]["response"]["output"]) == len(
        [i for i in theirs[-1]["response"]["output"] if i["type"] != "reasoning"]
    )


def script_from(stack: Stack, output: list[dict[str, Any]]) -> None:
    """The upstream makes the recorded code calls and says the recorded final text."""
    for item in output:
        if item["type"] == "code_interpreter_call":
            stack.upstream.push(completion(tool_calls=[code_call(item["code"])]))
        elif item["type"] == "message":
            stack.upstream.push(completion(item["content"][0]["text"]))


def post(stack: Stack, body: dict[str, Any]) -> httpx.Response:
    response = httpx.post(
        f"{stack.url}/v1/responses",
        json=body,
        headers={"authorization": f"Bearer {KEY_A}"},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    return response


def test_streamed_code_and_a_cited_file_match_the_recording(stack: Stack) -> None:
    first, download = interactions("responses-ci-stream-container-file-download.yaml")
    recorded = recorded_events(first["response"]["body"]["string"])
    script_from(stack, recorded[-1]["response"]["output"])
    response = post(stack, first["request"]["parsed_body"])
    assert response.headers["content-type"].startswith("text/event-stream")
    mine = ours(response.text)
    check_stream(mine, recorded)
    [citation] = [e for e in mine if e["type"] == "response.output_text.annotation.added"]
    annotation = citation["annotation"]
    content = httpx.get(
        f"{stack.url}/v1/containers/{annotation['container_id']}/files/{annotation['file_id']}/content",
        headers={"authorization": f"Bearer {KEY_A}", "accept": "application/binary"},
    )
    assert content.content == download["response"]["body"]["string"].encode()
    assert content.headers["content-disposition"] == download["response"]["headers"][
        "content-disposition"
    ][0].replace('filename="file.csv"', 'filename="numbers_and_squares.csv"')


def test_non_streamed_code_and_a_cited_file_match_the_recording(stack: Stack) -> None:
    first, download = interactions("responses-ci-nonstream-container-file-download.yaml")
    recorded = first["response"]["parsed_body"]
    script_from(stack, recorded["output"])
    mine = post(stack, first["request"]["parsed_body"]).json()
    check_response(mine, recorded)
    theirs = [item for item in recorded["output"] if item["type"] != "reasoning"]
    assert len(mine["output"]) == len(theirs)
    for item, recorded_item in zip(mine["output"], theirs, strict=True):
        check_item(item, recorded_item)
    [annotation] = mine["output"][-1]["content"][0]["annotations"]
    content = httpx.get(
        f"{stack.url}/v1/containers/{annotation['container_id']}/files/{annotation['file_id']}/content",
        headers={"authorization": f"Bearer {KEY_A}", "accept": "application/binary"},
    )
    assert content.content == download["response"]["body"]["string"].encode()


def test_streamed_image_outputs_match_the_recording(stack: Stack) -> None:
    [first] = interactions("responses-ci-stream-image-outputs.yaml")
    recorded = recorded_events(first["response"]["body"]["string"])
    script_from(stack, recorded[-1]["response"]["output"])
    mine = ours(post(stack, first["request"]["parsed_body"]).text)
    check_stream(mine, recorded)


def test_plain_stream_matches_the_recording(stack: Stack) -> None:
    [first] = interactions("responses-stream-full-headers.yaml")
    recorded = recorded_events(first["response"]["body"]["string"])
    script_from(stack, recorded[-1]["response"]["output"])
    response = post(stack, loads(first["request"]["body"]))
    assert response.headers["content-type"].startswith(
        first["response"]["headers"]["content-type"][0].split(";")[0]
    )
    mine = ours(response.text)
    check_stream(mine, recorded)
    assert mine[-1]["response"]["store"] is False


def test_multiturn_history_with_code_items_matches_the_recording(stack: Stack) -> None:
    """The second recorded turn sends the first turn's items back as input: the model must see
    the interpreter call and its result, as the hidden steps they were."""
    first, second = interactions("responses-ci-nonstream-logs-multiturn.yaml")
    recorded = first["response"]["parsed_body"]
    script_from(stack, recorded["output"])
    mine = post(stack, first["request"]["parsed_body"]).json()
    check_response(mine, recorded)
    theirs = [item for item in recorded["output"] if item["type"] != "reasoning"]
    for item, recorded_item in zip(mine["output"], theirs, strict=True):
        check_item(item, recorded_item)
    script_from(stack, second["response"]["parsed_body"]["output"])
    again = post(stack, second["request"]["parsed_body"]).json()
    check_response(again, second["response"]["parsed_body"])
    sent = stack.upstream.requests[-1]["messages"]
    call, result = sent[2], sent[3]
    assert call["tool_calls"][0]["function"]["name"] == "code_interpreter"
    assert loads(call["tool_calls"][0]["function"]["arguments"])["code"] == theirs[0]["code"]
    assert result["role"] == "tool" and result["content"] == "[output not available]"


def test_files_by_id_match_the_recording(stack: Stack) -> None:
    upload, create, delete = interactions("files-upload-ci-file-ids-delete.yaml")
    client = stack.client()
    stored = client.files.create(
        file=("data.csv", b"item,value\napple,30\nbanana,70\n"), purpose="assistants"
    )
    uploaded = stored.model_dump()
    assert set(uploaded) == set(upload["response"]["parsed_body"])
    body = create["request"]["parsed_body"]
    recorded_id = body["tools"][0]["container"]["file_ids"][0]
    body["tools"][0]["container"]["file_ids"] = [stored.id]
    recorded = create["response"]["parsed_body"]
    output = [dict(item) for item in recorded["output"]]
    # OpenAI puts a given file at /mnt/data/<file id>-<name>; codeproxy at /mnt/data/<name>.
    output[1]["code"] = output[1]["code"].replace(
        f"/mnt/data/{recorded_id}-data.csv", "/mnt/data/data.csv"
    )
    script_from(stack, output)
    mine = post(stack, body).json()
    check_response(mine, recorded)
    call, message = mine["output"]
    assert call["outputs"] is None and call["status"] == "completed"
    assert message["content"][0]["text"] == "The sum of the value column is 100."
    with_outputs = client.responses.retrieve(mine["id"], include=["code_interpreter_call.outputs"])
    assert with_outputs.output[0].outputs[0].logs == "100"  # type: ignore[union-attr,index]
    deleted = client.files.delete(stored.id)
    assert set(deleted.model_dump()) == set(delete["response"]["parsed_body"])
