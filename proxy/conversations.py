"""State across the turns of chat apps that send back only the visible messages.

After each reply, the hidden steps (the model's code calls and their results) are stored
under a hash of the visible conversation up to that reply. When the next request's visible
history contains that reply, the hidden steps are put back in place for the upstream, and the
conversation's sandbox session is reused, so the model knows what ran and the kernel still
holds its variables. An edited history matches no record and starts afresh.

When the app names its end user, conversations are that user's alone. When it forwards a chat
id, the chat keeps its sandbox (and files) across edits and regenerations too: the session is
also stored under the chat's key; the hidden steps still need the exact visible history.
"""

import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from executor.api import SessionEvicted, SessionExpired, SessionNotFound
from proxy.deps import Services
from proxy.forwarded import Forwarded
from proxy.ids import new_id
from proxy.jsonutil import dumps, loads
from storage.conversations import find_conversation, replace_conversation
from storage.models import Conversation

logger = logging.getLogger(__name__)

HIDDEN_ROLES = ("system", "developer")
# How a session that is gone ended, as the executor says.
ENDED_AS: dict[type[SessionNotFound], str] = {SessionEvicted: "evicted", SessionExpired: "expired"}
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


def prefix_hashes(messages: list[dict[str, Any]], user: str | None = None) -> list[str]:
    """Hashes of every visible prefix that ends with an assistant message, longest first;
    an end user's conversations hash apart from everyone else's."""
    digest = hashlib.sha256()
    if user is not None:
        digest.update(f"user\n{user}\n".encode())
    out = []
    for message in visible(messages):
        digest.update(dumps(_normal(message)) + b"\n")
        if message.get("role") == "assistant":
            out.append(digest.copy().hexdigest())
    return out[::-1]


def hash_with_reply(
    messages: list[dict[str, Any]], reply: dict[str, Any], user: str | None = None
) -> str:
    return prefix_hashes([*messages, reply], user)[0]


def chat_key(forwarded: Forwarded) -> str | None:
    """The key of a forwarded chat's own record (None without a chat id)."""
    if forwarded.chat_id is None:
        return None
    raw = f"chat\n{forwarded.user or ''}\n{forwarded.chat_id}".encode()
    return "chat-" + hashlib.sha256(raw).hexdigest()


@dataclass
class Memory:
    """The recalled state of a conversation (empty for a new or edited one)."""

    turns: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    session_id: str | None = None
    # How the conversation's sandbox ended ("expired", "evicted" or "lost"): its state is
    # gone and the model must be told.
    ended: str | None = None

    @property
    def known(self) -> bool:
        return bool(self.turns)

    @property
    def reset(self) -> bool:
        return self.ended is not None


async def recall(
    services: Services,
    tenant: str,
    messages: list[dict[str, Any]],
    forwarded: Forwarded = Forwarded(),
) -> Memory:
    now = int(time.time())
    hashes = prefix_hashes(messages, forwarded.user)
    key = chat_key(forwarded)
    async with services.db() as db:
        record = await find_conversation(db, tenant=tenant, hashes=hashes, now=now)
        chat = None
        if key is not None:
            chat = await find_conversation(db, tenant=tenant, hashes=[key], now=now)
    memory = Memory()
    if record is not None:
        memory = Memory(
            turns=loads(record.turns), files=loads(record.files), session_id=record.session_id
        )
    if chat is not None:
        memory.files = {**memory.files, **loads(chat.files)}
        memory.session_id = chat.session_id
    if memory.session_id is not None and services.executor is not None:
        try:
            await services.executor.get_session(tenant, memory.session_id)
        except SessionNotFound as exc:
            memory.ended = ENDED_AS.get(type(exc), "lost")
            logger.info(
                "the sandbox session %s of a conversation was %s; a new one will get its files",
                memory.session_id,
                memory.ended,
            )
            memory.session_id = None
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
    forwarded: Forwarded = Forwarded(),
    ran_code: bool = False,
) -> None:
    """Store the turn under the visible history with its reply, and the chat's sandbox under
    the chat's key when code ran in it."""
    now = int(time.time())
    expires_at = now + services.settings.conversation_retention
    record = Conversation(
        id=new_id("conv_"),
        tenant=tenant,
        prefix_hash=hash_with_reply(messages, reply, forwarded.user),
        session_id=session_id,
        turns=dumps(cap(turns, services.settings.max_hidden_chars)).decode(),
        files=dumps(files).decode(),
        created_at=now,
        expires_at=expires_at,
    )
    key = chat_key(forwarded)
    async with services.db() as db:
        db.add(record)
        if key is None or not ran_code:
            await db.commit()
            return
        chat = Conversation(
            id=new_id("conv_"),
            tenant=tenant,
            prefix_hash=key,
            session_id=session_id,
            files=record.files,
            created_at=now,
            expires_at=expires_at,
        )
        await replace_conversation(db, chat)
