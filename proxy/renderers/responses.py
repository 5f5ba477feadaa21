"""Responses API renderers: the `response` object, and its `response.*` SSE events.

Both fold the engine's events into output items the way OpenAI builds them: the model's text of
a round is a `message` item (its `sandbox:/mnt/data/…` links cited as `container_file_citation`
annotations of the container files they name, images the code showed cited at 0-0 as OpenAI
does), each interpreter call a `code_interpreter_call` item (its `outputs` only when the request
`include`s them), each of the client's function calls a `function_call` item. The stream sends
OpenAI's events in OpenAI's order, `event:` lines, `sequence_number` from 0 without gaps, and no
`[DONE]`: it ends with `response.completed` (or `.incomplete`), or an `error` event.
"""

import re
import time
from dataclasses import dataclass, field
from typing import Any

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
    RoundStarted,
    TextDelta,
)
from proxy.jsonutil import dumps
from proxy.responses_request import item_id
from proxy.streaming import KEEPALIVE

_LINK = re.compile(r"sandbox:(/mnt/data/[^\s)\]\"'<>]+)")
# Chat's reasons for stopping early, as the Responses API reports them.
INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}
# The codes a failed `response.error` may carry (OpenAI's ResponseErrorCode, without the
# image and vector-store ones no upstream error here maps to); any other is `server_error`.
RESPONSE_ERROR_CODES = frozenset({"server_error", "rate_limit_exceeded", "invalid_prompt"})


@dataclass(frozen=True)
class CitedFile:
    """A container file a message may link to."""

    container_id: str
    file_id: str  # `cfile_…`
    filename: str


@dataclass
class Head:
    """The fields of the `response` object that do not come from the engine."""

    id: str
    created_at: int
    model: str
    body: dict[str, Any]
    include_outputs: bool
    # Container files already there (given, uploaded, or written in earlier turns), by path;
    # a driver adds those a message links to before the message ends (see `cites`).
    known: dict[str, CitedFile] = field(default_factory=dict)


def usage_of(chat: dict[str, Any] | None) -> dict[str, Any] | None:
    """Chat usage (summed over the loop) as the Responses API reports it."""
    if not chat:
        return None
    prompt = chat.get("prompt_tokens", 0)
    completion = chat.get("completion_tokens", 0)
    prompt_details = chat.get("prompt_tokens_details") or {}
    completion_details = chat.get("completion_tokens_details") or {}
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": prompt_details.get("cached_tokens", 0)},
        "output_tokens": completion,
        "output_tokens_details": {
            "reasoning_tokens": completion_details.get("reasoning_tokens", 0)
        },
        "total_tokens": chat.get("total_tokens", prompt + completion),
    }


def without_outputs(item: dict[str, Any]) -> dict[str, Any]:
    """An output item as shown when `include` does not ask for interpreter outputs."""
    if item.get("type") == "code_interpreter_call":
        return {**item, "outputs": None}
    return item


def outputs_of(event: CallFinished) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for output in event.outputs:
        if isinstance(output, Logs):
            out.append({"type": "logs", "logs": output.logs})
        elif isinstance(output, Image):
            out.append({"type": "image", "url": f"data:{output.mime};base64,{output.base64}"})
    return out


class ResponseView:
    """What a Responses client sees of a turn; shared by the object and the stream renderers.

    `fold` returns the stream events (type and fields, without `sequence_number`) an event
    makes; the object renderer keeps only the items they build.
    """

    def __init__(self, head: Head) -> None:
        self.head = head
        self.model = head.model
        self.output: list[dict[str, Any]] = []
        self.container_id: str | None = None
        self.known = dict(head.known)
        # Images shown since the last message, cited by the next one.
        self._shown: list[CitedFile] = []
        self._message: dict[str, Any] | None = None
        self._text: list[str] = []
        self._refusal: list[str] = []
        self._calls: dict[str, tuple[int, dict[str, Any]]] = {}
        self.done: Done | None = None
        self._final: tuple[str, dict[str, Any]] | None = None

    def response(self, status: str, **extra: Any) -> dict[str, Any]:
        """The `response` object as it stands."""
        body = self.head.body
        show = self.head.include_outputs
        output = self.output if show else [without_outputs(item) for item in self.output]
        done = self.done
        return {
            "id": self.head.id,
            "object": "response",
            "created_at": self.head.created_at,
            "status": status,
            "background": False,
            "completed_at": int(time.time()) if status == "completed" else None,
            "error": None,
            "incomplete_details": None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "max_tool_calls": None,
            "model": self.model,
            "output": output,
            "parallel_tool_calls": body.get("parallel_tool_calls", True) is not False,
            "previous_response_id": body.get("previous_response_id"),
            "reasoning": {"effort": (body.get("reasoning") or {}).get("effort"), "summary": None},
            "service_tier": body.get("service_tier", "default"),
            "store": body.get("store", True) is not False,
            "temperature": body.get("temperature", 1.0),
            "text": body.get("text") or {"format": {"type": "text"}},
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools") or [],
            "top_p": body.get("top_p", 1.0),
            "truncation": "disabled",
            "usage": usage_of(done.usage) if done is not None else None,
            "user": body.get("user"),
            "metadata": body.get("metadata") or {},
            **extra,
        }

    def final(self) -> tuple[str, dict[str, Any]]:
        """The terminal status and the finished `response` object."""
        assert self.done is not None, "final() before Done"
        if self._final is None:
            reason = INCOMPLETE.get(self.done.finish_reason)
            if reason is None:
                self._final = ("completed", self.response("completed"))
            else:
                details = {"reason": reason}
                self._final = (
                    "incomplete",
                    self.response("incomplete", incomplete_details=details),
                )
        return self._final

    def cites(self, text: str | None) -> list[str]:
        """The /mnt/data paths `text` links to that are not known container files yet."""
        return [m.group(1) for m in _LINK.finditer(text or "") if m.group(1) not in self.known]

    def fold(self, event: Event) -> list[dict[str, Any]]:
        match event:
            case RoundStarted(model=model):
                if model:
                    self.model = model
            case TextDelta(text=text):
                out = self._open_text()
                self._text.append(text)
                return [*out, self._delta("response.output_text.delta", 0, delta=text, logprobs=[])]
            case RefusalDelta(text=text):
                out = self._open_refusal()
                self._refusal.append(text)
                index = 1 if self._text else 0
                return [*out, self._delta("response.refusal.delta", index, delta=text)]
            case MessageDone():
                return self._close_message()
            case CallStarted(item_id=call_id, container_id=container):
                self.container_id = container or self.container_id
                item: dict[str, Any] = {
                    "id": call_id,
                    "type": "code_interpreter_call",
                    "status": "in_progress",
                    "code": "",
                    "container_id": container or "",
                    "outputs": [],
                }
                index = self._add(item)
                self._calls[call_id] = (index, item)
                return [
                    self._item_event("response.output_item.added", index, item),
                    self._call_event("response.code_interpreter_call.in_progress", call_id),
                ]
            case CodeDelta(item_id=call_id, delta=delta):
                self._calls[call_id][1]["code"] += delta
                return [
                    self._call_event(
                        "response.code_interpreter_call_code.delta", call_id, delta=delta
                    )
                ]
            case CodeDone(item_id=call_id, code=code):
                self._calls[call_id][1]["code"] = code
                return [
                    self._call_event(
                        "response.code_interpreter_call_code.done", call_id, code=code
                    ),
                    self._call_event("response.code_interpreter_call.interpreting", call_id),
                ]
            case CallFinished(item_id=call_id):
                index, item = self._calls[call_id]
                item["status"] = event.status
                item["outputs"] = outputs_of(event)
                self._cite(event)
                shown = item if self.head.include_outputs else without_outputs(item)
                return [
                    self._call_event("response.code_interpreter_call.completed", call_id),
                    self._item_event("response.output_item.done", index, shown),
                ]
            case ClientCall(call_id=call_id, name=name, arguments=arguments):
                return self._function_call(call_id, name, arguments)
            case Done():
                self.done = event
                self.container_id = event.container_id or self.container_id
        return []

    def _add(self, item: dict[str, Any]) -> int:
        self.output.append(item)
        return len(self.output) - 1

    def _item_event(self, kind: str, index: int, item: dict[str, Any]) -> dict[str, Any]:
        return {"type": kind, "item": item, "output_index": index}

    def _call_event(self, kind: str, call_id: str, **fields: Any) -> dict[str, Any]:
        return {"type": kind, "item_id": call_id, "output_index": self._calls[call_id][0], **fields}

    def _delta(self, kind: str, content_index: int, **fields: Any) -> dict[str, Any]:
        message = self._message
        assert message is not None
        return {
            "type": kind,
            "item_id": message["id"],
            "output_index": len(self.output) - 1,
            "content_index": content_index,
            **fields,
        }

    def _open_message(self) -> list[dict[str, Any]]:
        if self._message is not None:
            return []
        self._message = {
            "id": item_id("msg_"),
            "type": "message",
            "status": "in_progress",
            "content": [],
            "role": "assistant",
        }
        index = self._add(self._message)
        return [self._item_event("response.output_item.added", index, dict(self._message))]

    def _open_text(self) -> list[dict[str, Any]]:
        out = self._open_message()
        if self._text:
            return out
        part = {"type": "output_text", "annotations": [], "logprobs": [], "text": ""}
        return [*out, self._delta("response.content_part.added", 0, part=part)]

    def _open_refusal(self) -> list[dict[str, Any]]:
        out = self._open_message()
        if self._refusal:
            return out
        index = 1 if self._text else 0
        part = {"type": "refusal", "refusal": ""}
        return [*out, self._delta("response.content_part.added", index, part=part)]

    def _close_message(self) -> list[dict[str, Any]]:
        message = self._message
        if message is None:
            return []
        out: list[dict[str, Any]] = []
        content: list[dict[str, Any]] = []
        if self._text:
            text = "".join(self._text)
            annotations = self._annotations(text)
            for n, annotation in enumerate(annotations):
                out.append(
                    self._delta(
                        "response.output_text.annotation.added",
                        0,
                        annotation_index=n,
                        annotation=annotation,
                    )
                )
            part = {"type": "output_text", "annotations": annotations, "logprobs": [], "text": text}
            out.append(self._delta("response.output_text.done", 0, text=text, logprobs=[]))
            out.append(self._delta("response.content_part.done", 0, part=part))
            content.append(part)
        if self._refusal:
            refusal = "".join(self._refusal)
            index = len(content)
            part = {"type": "refusal", "refusal": refusal}
            out.append(self._delta("response.refusal.done", index, refusal=refusal))
            out.append(self._delta("response.content_part.done", index, part=part))
            content.append(part)
        message["content"] = content
        message["status"] = "completed"
        out.append(self._item_event("response.output_item.done", len(self.output) - 1, message))
        self._message = None
        self._text = []
        self._refusal = []
        return out

    def _annotations(self, text: str) -> list[dict[str, Any]]:
        cited = [(0, 0, f) for f in self._shown]
        self._shown = []
        for match in _LINK.finditer(text):
            known = self.known.get(match.group(1))
            if known is not None:
                cited.append((match.start(), match.end(), known))
        return [
            {
                "type": "container_file_citation",
                "container_id": f.container_id,
                "end_index": end,
                "file_id": f.file_id,
                "filename": f.filename,
                "start_index": start,
            }
            for start, end, f in cited
        ]

    def _cite(self, event: CallFinished) -> None:
        run = event.run
        if run is None:
            return
        container = run.result.session_id
        for saved in run.files:
            if saved.path and saved.container_file_id:
                self.known[saved.path] = CitedFile(
                    container, saved.container_file_id, saved.filename
                )
        for image in run.images:
            if image.container_file_id:
                self._shown.append(CitedFile(container, image.container_file_id, image.filename))

    def _function_call(self, call_id: str, name: str, arguments: str) -> list[dict[str, Any]]:
        item = {
            "id": item_id("fc_"),
            "type": "function_call",
            "status": "in_progress",
            "arguments": "",
            "call_id": call_id,
            "name": name,
        }
        index = self._add(item)
        added = self._item_event("response.output_item.added", index, dict(item))
        item["arguments"] = arguments
        item["status"] = "completed"
        ids = {"item_id": item["id"], "output_index": index}
        return [
            added,
            {"type": "response.function_call_arguments.delta", **ids, "delta": arguments},
            {
                "type": "response.function_call_arguments.done",
                **ids,
                "arguments": arguments,
                "name": name,
            },
            self._item_event("response.output_item.done", index, item),
        ]


class ResponseJSON(ResponseView):
    """Folds a turn into one `response` object."""

    def feed(self, event: Event) -> None:
        """Fold one event."""
        self.fold(event)

    def result(self) -> dict[str, Any]:
        """The finished `response`, once `Done` was fed."""
        return self.final()[1]


class ResponseSSE(ResponseView):
    """Folds a turn into `response.*` SSE frames as it happens."""

    def __init__(self, head: Head) -> None:
        super().__init__(head)
        self._seq = 0
        self._started = False

    def frame(self, event: dict[str, Any]) -> bytes:
        """One SSE frame: `event:` line, the JSON with the next `sequence_number`."""
        event["sequence_number"] = self._seq
        self._seq += 1
        kind: str = event["type"]
        return b"event: " + kind.encode() + b"\ndata: " + dumps(event) + b"\n\n"

    @property
    def started(self) -> bool:
        return self._started

    def feed(self, event: Event) -> list[bytes]:
        """The frames to send for one event (`response.created` and `.in_progress` before
        the first: once the upstream has answered, so that errors before it keep a status)."""
        if isinstance(event, Heartbeat):
            return [KEEPALIVE] if self._started else []
        out: list[bytes] = []
        if not self._started and not isinstance(event, Failed):
            self._started = True
            if isinstance(event, RoundStarted) and event.model:
                self.model = event.model
            head = self.response("in_progress")
            out.append(self.frame({"type": "response.created", "response": head}))
            out.append(self.frame({"type": "response.in_progress", "response": head}))
        if isinstance(event, Failed):
            error = event.error.body().get("error") or {}
            fields = {k: error.get(k) for k in ("code", "message", "param")}
            # `response.failed` closes the stream as OpenAI's does: a client waiting for a
            # terminal `response.*` event is never left hanging.
            code = fields["code"] if fields["code"] in RESPONSE_ERROR_CODES else "server_error"
            failed = self.response("failed", error={"code": code, "message": fields["message"]})
            return [
                *out,
                self.frame({"type": "error", **fields}),
                self.frame({"type": "response.failed", "response": failed}),
            ]
        out.extend(self.frame(e) for e in self.fold(event))
        if isinstance(event, Done):
            status, response = self.final()
            out.append(self.frame({"type": f"response.{status}", "response": response}))
        return out
