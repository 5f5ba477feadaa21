"""Assistants renderer: a run's engine events folded into run steps, messages and the run
itself, and into the `thread.*` events OpenAI streams for them.

How events become objects (OpenAI's shapes and order):

- the model's text in a round is one assistant message, made by a `message_creation` step:
  `thread.run.step.created`, `.in_progress`, `thread.message.created`, `.in_progress`,
  `thread.message.delta`*, `thread.message.completed`, `thread.run.step.completed`;
- the interpreter calls of a round are one `tool_calls` step: created and in progress at the
  first call, a `thread.run.step.delta` per call (its id), per piece of code and for its
  outputs (logs, images by file id), completed when the round ends;
- the client's function calls are a `tool_calls` step that stays in progress while the run
  `requires_action`; images the code displayed open the next message as `image_file` parts;
  `sandbox:/mnt/data/…` links in a finished message become `file_path` annotations of the
  files the thread's code wrote.

`feed(event)` returns the SSE frames to send now; `take_changes()` returns the objects whose
state changed since the last call, for the driver to store before it sends those frames.
Nothing here does I/O.
"""

import posixpath
import re
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

from proxy.assistants.objects import (
    MESSAGE_FATE,
    STEP_FATE,
    end_message,
    end_run,
    end_step,
    last_error,
    message_object,
    public_usage,
    step_object,
)
from proxy.errors import APIError
from proxy.events import (
    CallFinished,
    CallStarted,
    ClientCall,
    CodeDelta,
    CodeDone,
    Done,
    Event,
    Image,
    MessageDone,
    RefusalDelta,
    RoundFinished,
    RoundStarted,
    TextDelta,
)
from proxy.model import add_usage
from proxy.streaming import event_frame

SANDBOX_LINK = re.compile(r"sandbox:/mnt/data/[^\s)\]\"'<>`]+")
TRAILING = ".,;:!?"


class RunRenderer:
    """Folds one stretch of a run (from its start, or from submitted tool outputs, to its end
    or its next `requires_action`) into objects and frames."""

    def __init__(
        self,
        run: dict[str, Any],
        *,
        files: dict[str, str],
        action_timeout: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.run = run
        # The thread's files by /mnt/data path, for annotations; this run's are added.
        self.files = dict(files)
        self.action_timeout = action_timeout
        self._clock = clock
        self._changes: dict[str, dict[str, Any]] = {}
        self._usage: dict[str, Any] = dict(run.get("usage") or {})
        # What the current round has opened.
        self._message: dict[str, Any] | None = None
        self._message_step: dict[str, Any] | None = None
        self._tools_step: dict[str, Any] | None = None
        self._calls: dict[str, int] = {}
        self._round_usage: dict[str, Any] | None = None
        # Images shown by code, waiting for the next message.
        self._images: list[str] = []
        self._text = ""
        self._text_index: int | None = None
        self._refusal_index: int | None = None
        self._client_calls: list[dict[str, Any]] = []

    def now(self) -> int:
        return int(self._clock())

    def take_changes(self) -> list[dict[str, Any]]:
        """The objects changed since the last call, each once, in the order they first
        changed (new ones are stored in the order they were made)."""
        changes, self._changes = list(self._changes.values()), {}
        return changes

    def _changed(self, obj: dict[str, Any]) -> None:
        self._changes[obj["id"]] = obj

    def _emit(self, event: str, obj: dict[str, Any]) -> bytes:
        """A snapshot event: the object changed, and is sent whole."""
        self._changed(obj)
        return event_frame(event, obj)

    def _run_event(self) -> bytes:
        return self._emit(f"thread.run.{self.run['status']}", self.run)

    def start(self) -> list[bytes]:
        """The run is picked up: `in_progress`."""
        self.run["status"] = "in_progress"
        self.run["started_at"] = self.run.get("started_at") or self.now()
        return [self._run_event()]

    def feed(self, event: Event) -> list[bytes]:
        """The frames for one engine event (`Failed` is not fed: see `fail`)."""
        match event:
            case RoundStarted():
                self._message = self._message_step = self._tools_step = None
                self._round_usage = None
                return []
            case TextDelta(text=text):
                return self._text_delta(text)
            case RefusalDelta(text=text):
                return self._refusal_delta(text)
            case MessageDone():
                return self._message_done(event)
            case CallStarted():
                return self._call_started(event)
            case CodeDelta(item_id=item_id, delta=delta):
                return [self._call_delta(item_id, {"input": delta})]
            case CodeDone(item_id=item_id, code=code):
                call = self._call(item_id)
                call["code_interpreter"]["input"] = code
                assert self._tools_step is not None
                self._changed(self._tools_step)  # stored with its code before the code runs
                return []
            case CallFinished():
                return self._call_finished(event)
            case RoundFinished():
                return self._close_tools_step()
            case ClientCall():
                return self._client_call(event)
            case Done():
                return self._done(event)
        return []

    def _open_message(self) -> list[bytes]:
        if self._message is not None:
            return []
        run = self.run
        message = message_object(
            thread_id=run["thread_id"],
            role="assistant",
            content=[],
            run_id=run["id"],
            assistant_id=run["assistant_id"],
            status="in_progress",
        )
        step = step_object(
            run, {"type": "message_creation", "message_creation": {"message_id": message["id"]}}
        )
        self._message, self._message_step = message, step
        self._text, self._text_index, self._refusal_index = "", None, None
        out = [
            self._emit("thread.run.step.created", step),
            event_frame("thread.run.step.in_progress", step),
            self._emit("thread.message.created", message),
            event_frame("thread.message.in_progress", message),
        ]
        for file_id in self._images:
            out.append(
                self._content(
                    message,
                    {"type": "image_file", "image_file": {"file_id": file_id, "detail": "auto"}},
                )
            )
        self._images = []
        return out

    def _content(self, message: dict[str, Any], part: dict[str, Any]) -> bytes:
        """A new content part, sent as a delta."""
        index = len(message["content"])
        message["content"].append(part)
        return self._message_delta(message, {"index": index, **part})

    def _message_delta(self, message: dict[str, Any], part: dict[str, Any]) -> bytes:
        return event_frame(
            "thread.message.delta",
            {"id": message["id"], "object": "thread.message.delta", "delta": {"content": [part]}},
        )

    def _text_delta(self, text: str) -> list[bytes]:
        out = self._open_message()
        message = self._message
        assert message is not None
        self._text += text
        if self._text_index is None:
            self._text_index = len(message["content"])
            out.append(
                self._content(message, {"type": "text", "text": {"value": text, "annotations": []}})
            )
        else:
            message["content"][self._text_index]["text"]["value"] = self._text
            out.append(
                self._message_delta(
                    message, {"index": self._text_index, "type": "text", "text": {"value": text}}
                )
            )
        return out

    def _refusal_delta(self, text: str) -> list[bytes]:
        out = self._open_message()
        message = self._message
        assert message is not None
        if self._refusal_index is None:
            self._refusal_index = len(message["content"])
            out.append(self._content(message, {"type": "refusal", "refusal": text}))
        else:
            message["content"][self._refusal_index]["refusal"] += text
            out.append(
                self._message_delta(
                    message, {"index": self._refusal_index, "type": "refusal", "refusal": text}
                )
            )
        return out

    def _message_done(self, event: MessageDone) -> list[bytes]:
        self._round_usage = event.usage
        out: list[bytes] = []
        if self._message is None and event.final and self._images:
            out += self._open_message()  # images shown, nothing said after them
        message, step = self._message, self._message_step
        if message is None or step is None:
            return out
        annotations = self._annotations(self._text)
        if annotations and self._text_index is not None:
            message["content"][self._text_index]["text"]["annotations"] = annotations
            out.append(
                self._message_delta(
                    message,
                    {
                        "index": self._text_index,
                        "type": "text",
                        "text": {
                            "annotations": [{"index": i, **a} for i, a in enumerate(annotations)]
                        },
                    },
                )
            )
        at = self.now()
        end_message(message, at)
        out.append(self._emit("thread.message.completed", message))
        step["usage"] = public_usage(event.usage)
        end_step(step, "completed", at)
        out.append(self._emit("thread.run.step.completed", step))
        self._message = None
        return out

    def _annotations(self, text: str) -> list[dict[str, Any]]:
        """`file_path` annotations for the `sandbox:` links to files the thread's code wrote."""
        found = []
        for match in SANDBOX_LINK.finditer(text):
            link = match.group()
            file_id = self._file_for(link)
            if file_id is None and link.rstrip(TRAILING) != link:
                link = link.rstrip(TRAILING)
                file_id = self._file_for(link)
            if file_id is not None:
                found.append(
                    {
                        "type": "file_path",
                        "text": link,
                        "start_index": match.start(),
                        "end_index": match.start() + len(link),
                        "file_path": {"file_id": file_id},
                    }
                )
        return found

    def _file_for(self, link: str) -> str | None:
        path = posixpath.normpath(unquote(link[len("sandbox:") :]))
        return self.files.get(path)

    def _open_tools_step(self) -> list[bytes]:
        if self._tools_step is not None:
            return []
        step = step_object(self.run, {"type": "tool_calls", "tool_calls": []})
        self._tools_step = step
        return [
            self._emit("thread.run.step.created", step),
            event_frame("thread.run.step.in_progress", step),
        ]

    def _add_call(self, call: dict[str, Any]) -> bytes:
        step = self._tools_step
        assert step is not None
        calls = step["step_details"]["tool_calls"]
        calls.append(call)
        return self._step_delta(step, {"index": len(calls) - 1, **call})

    def _step_delta(self, step: dict[str, Any], call: dict[str, Any]) -> bytes:
        return event_frame(
            "thread.run.step.delta",
            {
                "id": step["id"],
                "object": "thread.run.step.delta",
                "delta": {"step_details": {"type": "tool_calls", "tool_calls": [call]}},
            },
        )

    def _call_started(self, event: CallStarted) -> list[bytes]:
        out = self._open_tools_step()
        assert self._tools_step is not None
        self._calls[event.item_id] = len(self._tools_step["step_details"]["tool_calls"])
        call = {
            "id": event.call_id or event.item_id,
            "type": "code_interpreter",
            "code_interpreter": {"input": "", "outputs": []},
        }
        out.append(self._add_call(call))
        return out

    def _call(self, item_id: str) -> dict[str, Any]:
        assert self._tools_step is not None
        call: dict[str, Any] = self._tools_step["step_details"]["tool_calls"][self._calls[item_id]]
        return call

    def _call_delta(self, item_id: str, delta: dict[str, Any]) -> bytes:
        call = self._call(item_id)
        assert self._tools_step is not None
        if "input" in delta:
            call["code_interpreter"]["input"] += delta["input"]
        return self._step_delta(
            self._tools_step,
            {"index": self._calls[item_id], "type": "code_interpreter", "code_interpreter": delta},
        )

    def _call_finished(self, event: CallFinished) -> list[bytes]:
        call = self._call(event.item_id)
        outputs = call["code_interpreter"]["outputs"]
        new: list[dict[str, Any]] = []
        for output in event.outputs:
            if isinstance(output, Image):
                new.append({"type": "image", "image": {"file_id": output.file_id}})
                self._images.append(output.file_id)
            else:
                new.append({"type": "logs", "logs": output.logs})
        if event.run is not None:
            for saved in event.run.files:
                if saved.path:
                    self.files[saved.path] = saved.file_id
        first = len(outputs)
        outputs.extend(new)
        assert self._tools_step is not None
        self._changed(self._tools_step)
        if not new:
            return []
        indexed = [{"index": first + i, **o} for i, o in enumerate(new)]
        frame = self._step_delta(
            self._tools_step,
            {
                "index": self._calls[event.item_id],
                "type": "code_interpreter",
                "code_interpreter": {"outputs": indexed},
            },
        )
        return [frame]

    def _close_tools_step(self) -> list[bytes]:
        step = self._tools_step
        if step is None or step["status"] != "in_progress":
            return []
        if self._message_step is None:
            step["usage"] = public_usage(self._round_usage)
        end_step(step, "completed", self.now())
        return [self._emit("thread.run.step.completed", step)]

    def _client_call(self, event: ClientCall) -> list[bytes]:
        out = self._open_tools_step()
        call = {
            "id": event.call_id,
            "type": "function",
            "function": {"name": event.name, "arguments": event.arguments, "output": None},
        }
        self._client_calls.append(
            {
                "id": event.call_id,
                "type": "function",
                "function": {"name": event.name, "arguments": event.arguments},
            }
        )
        out.append(self._add_call(call))
        return out

    def _done(self, done: Done) -> list[bytes]:
        add_usage(self._usage, done.usage)
        run = self.run
        run["usage"] = public_usage(self._usage)
        if self._client_calls:
            step = self._tools_step
            if step is not None and self._message_step is None:
                step["usage"] = public_usage(self._round_usage)
                self._changed(step)
            run["status"] = "requires_action"
            run["required_action"] = {
                "type": "submit_tool_outputs",
                "submit_tool_outputs": {"tool_calls": self._client_calls},
            }
            run["expires_at"] = self.now() + self.action_timeout
            return [self._run_event()]
        end_run(run, "completed", self.now())
        return [self._run_event()]

    def _end(self, status: str, error: dict[str, str] | None = None) -> list[bytes]:
        """Close what is open for a run that ends in `status`, then the run."""
        at = self.now()
        out: list[bytes] = []
        if self._message is not None:
            end_message(self._message, at, MESSAGE_FATE[status])
            out.append(self._emit(f"thread.message.{self._message['status']}", self._message))
        for step in (self._message_step, self._tools_step):
            if step is not None and step["status"] == "in_progress":
                end_step(step, STEP_FATE[status], at, error if status == "failed" else None)
                out.append(self._emit(f"thread.run.step.{step['status']}", step))
        return out

    def fail(self, error: APIError) -> list[bytes]:
        """The run failed with `error`."""
        details = last_error(error)
        out = self._end("failed", details)
        self.run["usage"] = public_usage(self._usage)
        end_run(self.run, "failed", self.now(), error=details)
        return [*out, self._run_event()]

    def cancel(self) -> list[bytes]:
        """The run was cancelled."""
        out = self._end("cancelled")
        self.run["usage"] = public_usage(self._usage)
        end_run(self.run, "cancelled", self.now())
        return [*out, self._run_event()]

    def incomplete(self, reason: str, usage: dict[str, Any]) -> list[bytes]:
        """The run hit a token limit (`max_prompt_tokens` / `max_completion_tokens`) after
        the model used `usage` in this stretch."""
        out = self._end("incomplete")
        add_usage(self._usage, usage)
        self.run["usage"] = public_usage(self._usage)
        end_run(self.run, "incomplete", self.now(), reason=reason)
        return [*out, self._run_event()]
