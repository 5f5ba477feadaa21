"""What the upstream model reads for a run: the run's instructions, then the thread.

A thread is stored as clients see it (messages); what a completed run did that no message
shows — its code calls and their results, function calls and their outputs — is its
transcript, in chat-completions form. The context puts each completed run's transcript in
place of the messages that run wrote, so the model sees what ran before. Transcripts are
bounded like a chat conversation's hidden steps (oldest outputs omitted first); a run whose
transcript had to go entirely is shown by its messages alone.
"""

import base64
from typing import Any

from proxy.conversations import cap
from proxy.deps import Services
from proxy.filestore import open_file
from proxy.jsonutil import loads
from storage.assistants import completed_runs
from storage.files import get_file

# Images larger than this are described to the model instead of sent.
MAX_IMAGE_BYTES = 20 * 1024 * 1024


async def thread_context(
    services: Services,
    tenant: str,
    *,
    run: dict[str, Any],
    thread: list[dict[str, Any]],
    paths: dict[str, str],
) -> list[dict[str, Any]]:
    """The upstream messages for `run` from the thread's messages (oldest first), without
    what the run itself has added so far.

    `paths` maps file ids to where they are in /mnt/data, to say where attachments are.
    """
    messages = [m for m in thread if m.get("run_id") != run["id"]]
    truncation = run.get("truncation_strategy") or {}
    if truncation.get("type") == "last_messages" and truncation.get("last_messages"):
        messages = messages[-truncation["last_messages"] :]
    shown_runs = list(dict.fromkeys(m["run_id"] for m in messages if m.get("run_id")))
    async with services.db() as db:
        done = await completed_runs(db, run_ids=shown_runs)
    order = {run_id: i for i, run_id in enumerate(shown_runs)}
    done.sort(key=lambda r: order[r.id])
    turns = [{"run_id": r.id, "hidden": loads(r.transcript)} for r in done]
    transcripts = {
        t["run_id"]: t["hidden"]
        for t in cap(turns, services.settings.max_hidden_chars)
        if t["hidden"]
    }
    out: list[dict[str, Any]] = []
    if run.get("instructions"):
        out.append({"role": "system", "content": run["instructions"]})
    shown: set[str] = set()
    for message in messages:
        run_id = message.get("run_id")
        if run_id is not None and run_id in transcripts:
            if run_id not in shown:
                shown.add(run_id)
                out.extend(transcripts[run_id])
            continue
        out.append(await _plain(services, tenant, message, paths))
    return out


def attachment_files(messages: list[dict[str, Any]]) -> list[str]:
    """The files attached to the messages for the code interpreter, oldest first."""
    files: list[str] = []
    for message in messages:
        for attachment in message.get("attachments") or []:
            if any(t.get("type") == "code_interpreter" for t in attachment.get("tools") or []):
                files.append(attachment["file_id"])
    return files


async def _plain(
    services: Services, tenant: str, message: dict[str, Any], paths: dict[str, str]
) -> dict[str, Any]:
    """A stored message as a chat message: its text, its images as image parts, and where its
    attachments are."""
    texts: list[str] = []
    parts: list[dict[str, Any]] = []
    for part in message["content"]:
        kind = part["type"]
        if kind == "text":
            texts.append(part["text"]["value"])
            parts.append({"type": "text", "text": part["text"]["value"]})
        elif kind == "image_url":
            parts.append({"type": "image_url", "image_url": dict(part["image_url"])})
        elif kind == "image_file":
            parts.append(await _image(services, tenant, part["image_file"]))
    attached = [
        paths[a["file_id"]] for a in message.get("attachments") or [] if a["file_id"] in paths
    ]
    if attached:
        note = "[Attached files, in the code interpreter's sandbox: " + ", ".join(attached) + "]"
        texts.append(note)
        parts.append({"type": "text", "text": note})
    if message["role"] == "assistant" or all(p["type"] == "text" for p in parts):
        return {"role": message["role"], "content": "\n\n".join(texts)}
    return {"role": message["role"], "content": parts}


async def _image(services: Services, tenant: str, image: dict[str, Any]) -> dict[str, Any]:
    """An `image_file` part as an image the upstream can read: a data URL of the file."""
    async with services.db() as db:
        row = await get_file(db, tenant=tenant, file_id=image["file_id"])
    if row is None:
        return {"type": "text", "text": f"[image {image['file_id']} was deleted]"}
    if row.bytes > MAX_IMAGE_BYTES:
        return {"type": "text", "text": f"[image {row.filename} is too large to show]"}
    data = b"".join([chunk async for chunk in await open_file(services.blobs, row)])
    url = f"data:{row.content_type};base64,{base64.b64encode(data).decode()}"
    return {"type": "image_url", "image_url": {"url": url, "detail": image.get("detail", "auto")}}
