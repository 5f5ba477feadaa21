"""Chat Completions renderers: the `chat.completion` object and its `chat.completion.chunk` SSE.

What the client sees is one assistant message whose content joins visible pieces with a blank
line: the model's text of each round and, when a transcript is on, each run's code and output.
With `response_format` of type `json_schema` or `json_object` the content is exactly the
model's final message (structured-output parsers read it as JSON); what ran stays in the
`code_interpreter` field.
"""

from typing import Any

from proxy.coderunner import Run
from proxy.events import (
    CallFinished,
    ClientCall,
    CodeDone,
    Done,
    Event,
    Heartbeat,
    MessageDone,
    RefusalDelta,
    RoundStarted,
    TextDelta,
)
from proxy.streaming import DONE, KEEPALIVE, frame
from proxy.transcript import Transcript


def json_mode(body: dict[str, Any]) -> bool:
    """Whether the request asks for structured output, which must reach the client as is."""
    response_format = body.get("response_format")
    return isinstance(response_format, dict) and response_format.get("type") in (
        "json_schema",
        "json_object",
    )


class _Pieces:
    """The visible content, built piece by piece; a new piece starts after a blank line."""

    def __init__(self) -> None:
        self._sent: list[str] = []
        self._pieces = 0
        self._open = False

    @property
    def sent(self) -> str:
        return "".join(self._sent)

    def add(self, text: str) -> str:
        """Add to the open piece (opening one if needed); returns what to send."""
        if not text:
            return ""
        if not self._open:
            if self._pieces:
                text = "\n\n" + text
            self._pieces += 1
            self._open = True
        self._sent.append(text)
        return text

    def piece(self, text: str) -> str:
        """A whole piece at once (a transcript block)."""
        out = self.add(text)
        self._open = False
        return out

    def end(self) -> None:
        self._open = False


class ChatView:
    """What a chat client sees of a turn; shared by the object and the stream renderers."""

    def __init__(self, *, transcript: Transcript, structured: bool) -> None:
        self.transcript = transcript
        self.structured = structured
        self.text = _Pieces()
        self.client_calls: list[dict[str, Any]] = []
        self.runs: list[Run] = []
        self.last: MessageDone | None = None

    @property
    def content(self) -> str:
        return self.text.sent

    def reply(self) -> dict[str, Any]:
        """The assistant message as the client received it."""
        message: dict[str, Any] = {"role": "assistant", "content": self.content or None}
        if self.client_calls:
            message["tool_calls"] = self.client_calls
        return message

    def visible(self, event: Event) -> str:
        """Fold `event`; returns the content to send for it (empty if none)."""
        match event:
            case TextDelta(text=text):
                return "" if self.structured else self.text.add(text)
            case MessageDone():
                self.last = event
                if self.structured:
                    return self.text.piece(event.text or "") if event.final else ""
                self.text.end()
            case CodeDone(code=code, language=language):
                if not self.structured:
                    return self.text.piece(self.transcript.code(code, language))
            case CallFinished(run=Run() as run):
                self.runs.append(run)
                if not self.structured:
                    return self.text.piece(self.transcript.result(run))
            case ClientCall(raw=raw):
                self.client_calls.append(raw)
        return ""

    def code_interpreter(self, done: Done) -> dict[str, Any]:
        """The `code_interpreter` field: the container and every run, as the API reports them."""
        return {
            "container_id": done.container_id,
            "executions": [run.public() for run in self.runs],
        }


class ChatCompletionJSON(ChatView):
    """Folds a turn into one `chat.completion`, keeping the upstream's own fields."""

    def __init__(self, *, id: str, created: int, transcript: Transcript, structured: bool):
        super().__init__(transcript=transcript, structured=structured)
        self.id = id
        self.created = created
        self.done: Done | None = None

    def feed(self, event: Event) -> None:
        """Fold one event."""
        if isinstance(event, Done):
            self.done = event
        else:
            self.visible(event)

    def result(self) -> dict[str, Any]:
        """The `chat.completion`, once `Done` was fed."""
        assert self.done is not None and self.last is not None, "result() before Done"
        response = self.last.raw or {}
        choice = dict((response.get("choices") or [{}])[0])
        message = dict(choice.get("message") or {"role": "assistant"})
        message["content"] = self.content or None
        if self.client_calls:
            message["tool_calls"] = self.client_calls
        else:
            message.pop("tool_calls", None)
        choice["finish_reason"] = self.done.finish_reason
        choice["message"] = message
        choice["index"] = 0
        return {
            **response,
            "id": self.id,
            "created": self.created,
            "choices": [choice],
            "usage": self.done.usage or response.get("usage"),
            "code_interpreter": self.code_interpreter(self.done),
        }


class ChatCompletionSSE(ChatView):
    """Folds a turn into `chat.completion.chunk` frames as it happens."""

    def __init__(
        self,
        *,
        id: str,
        created: int,
        model: str,
        transcript: Transcript,
        structured: bool,
        include_usage: bool,
    ) -> None:
        super().__init__(transcript=transcript, structured=structured)
        self.id = id
        self.created = created
        self.model = model
        self.include_usage = include_usage
        self._started = False

    def feed(self, event: Event) -> list[bytes]:
        """The frames to send for one event (the role chunk before the first content)."""
        match event:
            case RoundStarted(model=model):
                if model:
                    self.model = model
                return []
            case Heartbeat():
                return [KEEPALIVE]
            case RefusalDelta(text=text):
                return [*self._start(), self._chunk({"refusal": text})]
            case Done():
                return self._end(event)
        text = self.visible(event)
        if not text:
            return []
        return [*self._start(), self._chunk({"content": text})]

    def _start(self) -> list[bytes]:
        """The role chunk, once, before the first content."""
        if self._started:
            return []
        self._started = True
        return [self._chunk({"role": "assistant", "content": "", "refusal": None})]

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return frame(
            {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "system_fingerprint": None,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
                "usage": None,
            }
        )

    def _end(self, done: Done) -> list[bytes]:
        out = self._start()
        for index, call in enumerate(self.client_calls):
            function = call["function"]
            out.append(
                self._chunk(
                    {
                        "tool_calls": [
                            {
                                "index": index,
                                "id": call["id"],
                                "type": "function",
                                "function": {
                                    "name": function["name"],
                                    "arguments": function["arguments"],
                                },
                            }
                        ]
                    }
                )
            )
        out.append(self._chunk({}, done.finish_reason))
        if self.include_usage:
            out.append(
                frame(
                    {
                        "id": self.id,
                        "object": "chat.completion.chunk",
                        "created": self.created,
                        "model": self.model,
                        "system_fingerprint": None,
                        "choices": [],
                        "usage": done.usage or None,
                    }
                )
            )
        out.append(DONE)
        return out
