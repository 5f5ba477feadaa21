"""State across the turns of chat apps that send back only the visible messages.

After each reply, the hidden steps (the model's code calls and their results) are stored
under a hash of the visible conversation up to that reply. When the next request's visible
history contains that reply, the hidden steps are put back in place for the upstream, and the
conversation's sandbox session is reused, so the model knows what ran and the kernel still
holds its variables. An edited history matches no record and starts afresh.
"""

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

from executor.api import SessionNotFound
from proxy.deps import Services
from proxy.ids import new_id
from proxy.jsonutil import dumps, loads
from storage.conversations import find_conversation
from storage.models import Conversation

HIDDEN_ROLES = ("system", "developer")
OMITTED = "[output of an earlier run omitted]"


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content.strip()
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict):
                parts.append(
                    part.get("text") if part.get("type") == "text" else f"<{part.get('type')}>"
                )
        return "\n".join(str(p) for p in parts if p).strip()
    return ""


def _normal(message: dict[str, Any]) -> list[Any]:
    """What identifies a visible message, insensitive to formatting a client may change."""
    calls = [
        [
            c.get("id"),
            (c.get("function") or {}).get("name"),
            (c.get("function") or {}).get("arguments"),
        ]
        for c in message.get("tool_calls") or []
        if isinstance(c, dict)
    ]
    return [message.get("role"), _text(message.get("content")), calls, message.get("tool_call_id")]


def visible(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in messages if m.get("role") not in HIDDEN_ROLES]


def prefix_hashes(messages: list[dict[str, Any]]) -> list[str]:
    """Hashes of every visible prefix that ends with an assistant message, longest first."""
    digest = hashlib.sha256()
    out = []
    for message in visible(messages):
        digest.update(dumps(_normal(message)) + b"\n")
        if message.get("role") == "assistant":
            out.append(digest.copy().hexdigest())
    return out[::-1]


def hash_with_reply(messages: list[dict[str, Any]], reply: dict[str, Any]) -> str:
    return prefix_hashes([*messages, reply])[0]


@dataclass
class Memory:
    """The recalled state of a conversation (empty for a new or edited one)."""

    turns: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    session_id: str | None = None
    # The conversation's sandbox expired: state is gone and the model must be told.
    reset: bool = False

    @property
    def known(self) -> bool:
        return bool(self.turns)


async def recall(services: Services, tenant: str, messages: list[dict[str, Any]]) -> Memory:
    now = int(time.time())
    async with services.db() as db:
        record = await find_conversation(db, tenant=tenant, hashes=prefix_hashes(messages), now=now)
    if record is None:
        return Memory()
    memory = Memory(
        turns=loads(record.turns), files=loads(record.files), session_id=record.session_id
    )
    if memory.session_id is not None and services.executor is not None:
        try:
            await services.executor.get_session(tenant, memory.session_id)
        except SessionNotFound:
            memory.session_id = None
            memory.reset = True
    return memory


def rebuild(messages: list[dict[str, Any]], turns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The upstream history: the visible messages with each remembered reply's hidden steps
    before it and the model's own text in place of what the client was shown."""
    by_index = {turn["index"]: turn for turn in turns}
    out: list[dict[str, Any]] = []
    k = 0
    for message in messages:
        if message.get("role") in HIDDEN_ROLES:
            out.append(message)
            continue
        turn = by_index.get(k)
        if turn is not None and message.get("role") == "assistant":
            out.extend(turn["hidden"])
            out.append({**message, "content": turn["content"]})
        else:
            out.append(message)
        k += 1
    return out


def cap(turns: list[dict[str, Any]], max_chars: int) -> list[dict[str, Any]]:
    """Bound the hidden steps: oldest tool outputs are omitted first, then oldest steps."""
    turns = [{**t, "hidden": [dict(m) for m in t["hidden"]]} for t in turns]

    def size() -> int:
        return sum(len(dumps(t["hidden"])) for t in turns)

    for turn in turns:
        if size() <= max_chars:
            return turns
        for message in turn["hidden"]:
            if message.get("role") == "tool" and len(message.get("content") or "") > len(OMITTED):
                message["content"] = OMITTED
    for turn in turns:
        if size() <= max_chars:
            break
        turn["hidden"] = []
    return turns


async def remember(
    services: Services,
    tenant: str,
    *,
    messages: list[dict[str, Any]],
    reply: dict[str, Any],
    turns: list[dict[str, Any]],
    files: dict[str, str],
    session_id: str | None,
) -> None:
    now = int(time.time())
    record = Conversation(
        id=new_id("conv_"),
        tenant=tenant,
        prefix_hash=hash_with_reply(messages, reply),
        session_id=session_id,
        turns=dumps(cap(turns, services.settings.max_hidden_chars)).decode(),
        files=dumps(files).decode(),
        created_at=now,
        expires_at=now + services.settings.conversation_retention,
    )
    async with services.db() as db:
        db.add(record)
        await db.commit()
