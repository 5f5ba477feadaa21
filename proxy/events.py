"""What the loop engine says while it runs a turn: a closed union of small, immutable events.

Order within one turn (`*` any number, `+` one or more):

    for each round:
        RoundStarted                      the upstream began answering
        (TextDelta | RefusalDelta)*       the model's message, as it arrives
        MessageDone                       the message whole; `final` when no code follows
        if not final, for each interpreter call of the message, in order:
            Heartbeat*                    waiting for a sandbox
            CallStarted                   the container is known
            CodeDelta+ CodeDone           the code, before it runs
            Heartbeat*                    the code is running
            CallFinished                  the run, its outputs and files (or why it did not run)
        RoundFinished                     after every round but the final one
    ClientCall*                           the client's own functions, handed back
    Done                                  last

`Failed` may end the turn at any point instead of `Done`: it is then the last event. A call whose
arguments the engine cannot read produces no events: the error goes back to the model as the
tool result. Heartbeats come only when the turn streams, and only while the sandbox works.
"""

from dataclasses import dataclass
from typing import Any, Literal

from proxy.coderunner import IMAGE_TYPES, Run
from proxy.errors import APIError


@dataclass(frozen=True, slots=True)
class RoundStarted:
    """The upstream has begun answering round `round` (0-based)."""

    round: int
    # The model as the upstream names it (may differ from the one asked for), if it says.
    model: str | None


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of the model's text in this round, in arrival order."""

    text: str


@dataclass(frozen=True, slots=True)
class RefusalDelta:
    """A piece of the model's refusal in this round."""

    text: str


@dataclass(frozen=True, slots=True)
class MessageDone:
    """The model's message of one round is complete (either part may be None)."""

    round: int
    text: str | None
    refusal: str | None
    # No interpreter call follows: this message is the turn's answer.
    final: bool
    # As the upstream gave it for this call, and this call's token usage.
    finish_reason: str | None
    usage: dict[str, Any] | None
    # The upstream's whole answer when it came in one piece (not streamed), for a surface
    # that passes on fields the engine does not know; None when streamed.
    raw: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class CallStarted:
    """The model called the interpreter and a sandbox is ready for it."""

    item_id: str  # ours (`ci_…`), unique per call
    call_id: str  # the model's tool call id
    # The container (executor session) the code runs in; None only if none could be had.
    container_id: str | None


@dataclass(frozen=True, slots=True)
class CodeDelta:
    """A piece of the call's code. The deltas of a call join to its CodeDone's code."""

    item_id: str
    delta: str


@dataclass(frozen=True, slots=True)
class CodeDone:
    """The call's code is complete and about to run."""

    item_id: str
    code: str
    language: str


@dataclass(frozen=True, slots=True)
class Logs:
    """Text the code printed, its last expression's value, or its error."""

    logs: str


@dataclass(frozen=True, slots=True)
class Image:
    """An image the code displayed, stored as a tenant file."""

    file_id: str
    filename: str
    mime: str
    base64: str  # the image itself, for surfaces that inline it as a data: URL


Output = Logs | Image


@dataclass(frozen=True, slots=True)
class CallFinished:
    """The call is over: `run` is what ran (with its saved files), or None and `error` says why
    the code did not run (e.g. an unsupported language)."""

    item_id: str
    run: Run | None
    error: str | None

    @property
    def status(self) -> Literal["completed", "failed"]:
        return "failed" if self.run is None else "completed"

    @property
    def outputs(self) -> list[Output]:
        """The run's logs, then its displayed images, as Responses and Assistants show them."""
        if self.run is None:
            return [Logs(self.error or "")]
        out: list[Output] = []
        logs = self.run.logs()
        if logs:
            out.append(Logs(logs))
        shown = [o.data for o in self.run.result.results if any(m in o.data for m in IMAGE_TYPES)]
        for data, saved in zip(shown, self.run.images, strict=False):
            mime = next(m for m in IMAGE_TYPES if m in data)
            out.append(Image(saved.file_id, saved.filename, mime, data[mime]))
        return out


@dataclass(frozen=True, slots=True)
class RoundFinished:
    """Every interpreter call of the round has finished; the next upstream call follows."""

    round: int


@dataclass(frozen=True, slots=True)
class ClientCall:
    """A call of one of the client's own functions, for the client to run."""

    call_id: str
    name: str
    arguments: str
    # The call as the upstream sent it (chat-completions `tool_calls` entry).
    raw: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Nothing new yet: the sandbox is busy. Streaming surfaces send a keepalive."""


@dataclass(frozen=True, slots=True)
class Done:
    """The turn is over."""

    # `tool_calls` when client calls were handed back, else the upstream's reason (`stop`,
    # `length`, …; `stop` when it gave none).
    finish_reason: str
    # The model's own text in the last round (what it said, not what a surface showed).
    text: str | None
    # Token usage summed over every upstream call of the turn.
    usage: dict[str, Any]
    # The messages this turn added to the upstream conversation that no client sees: the
    # model's interpreter calls and their results, in chat-completions form. A surface that
    # continues the conversation later puts them back before the answer.
    hidden: list[dict[str, Any]]
    container_id: str | None


@dataclass(frozen=True, slots=True)
class Failed:
    """The turn failed; `error` is ready to show (it forbids a retry once code has run)."""

    error: APIError


Event = (
    RoundStarted
    | TextDelta
    | RefusalDelta
    | MessageDone
    | CallStarted
    | CodeDelta
    | CodeDone
    | CallFinished
    | RoundFinished
    | ClientCall
    | Heartbeat
    | Done
    | Failed
)
