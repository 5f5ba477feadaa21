"""Runs: create (also with a new thread), list, retrieve, modify, cancel, submit tool outputs.

A run is stored `queued` and driven in the background of this process (see
`proxy/assistants/manager.py`); with `stream: true` the response follows it as `thread.*`
events until it ends or needs tool outputs. At most one run of a thread is active: a second
is refused, as OpenAI does.
"""

import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Response
from sqlmodel import col, update
from sqlmodel.ext.asyncio.session import AsyncSession
from starlette.responses import StreamingResponse

from proxy.assistants.manager import RunManager
from proxy.assistants.objects import TERMINAL, end_step, listing, now
from proxy.assistants.routes.common import PageDep, RunsDep, new_message
from proxy.assistants.routes.threads import add_thread, make_thread
from proxy.assistants.schemas import (
    CreateRun,
    CreateThread,
    CreateThreadAndRun,
    ModifyRun,
    RunFields,
    SubmitToolOutputs,
    check_response_format,
    check_tool_choice,
    check_tool_resources,
    check_tools,
)
from proxy.assistants.store import dump, end_run_row, new_row, public, require, save, settle
from proxy.deps import DbDep, Services, ServicesDep, TenantDep, get_executor
from proxy.errors import InvalidRequestError
from proxy.ids import new_id
from proxy.jsonutil import JSONResponse, dumps, loads
from proxy.streaming import event_frame, guarded
from storage.assistants import (
    DRIVEN,
    claim_thread,
    get_object,
    list_objects,
    release_thread,
    run_steps,
)
from storage.models import Assistant, Thread, ThreadRun

router = APIRouter(tags=["assistants"])

SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
# How long a cancel request waits for a run this process drives to end.
CANCEL_WAIT = 5.0


async def settled(db: AsyncSession, runs: RunManager, row: ThreadRun) -> ThreadRun:
    """The run as it is: ended if no process drives it any more."""
    if row.status in TERMINAL:
        return row
    at = time.time()
    return await settle(
        db, row, now=at, silent_since=runs.silent_since(at), local=runs.drives(row.id)
    )


async def active_run(db: AsyncSession, runs: RunManager, thread: Thread) -> str | None:
    """The id of the thread's active run, if it is still active."""
    if thread.active_run_id is None:
        return None
    row = await get_object(db, ThreadRun, tenant=thread.tenant, id=thread.active_run_id)
    if row is None:  # not to be: runs go with their thread; never hold it forever then
        await release_thread(db, thread_id=thread.id, run_id=thread.active_run_id)
        await db.commit()
        return None
    row = await settled(db, runs, row)
    return None if row.status in TERMINAL else row.id


def run_object(
    services: Services,
    *,
    assistant: dict[str, Any],
    thread_id: str,
    body: RunFields,
    additional_instructions: str | None = None,
) -> dict[str, Any]:
    """A new run: what the request sets, else what the assistant has."""
    given = body.model_fields_set
    tools = check_tools(body.tools) if body.tools is not None else assistant["tools"]
    instructions = body.instructions if body.instructions is not None else assistant["instructions"]
    if additional_instructions:
        instructions = (
            f"{instructions}\n\n{additional_instructions}"
            if instructions
            else additional_instructions
        )
    truncation = body.truncation_strategy
    if (
        truncation is not None
        and truncation.type == "last_messages"
        and truncation.last_messages is None
    ):
        raise InvalidRequestError(
            "Missing required parameter: 'truncation_strategy.last_messages'.",
            param="truncation_strategy.last_messages",
            code="missing_required_parameter",
        )
    created = now()
    run: dict[str, Any] = {
        "id": new_id("run_"),
        "object": "thread.run",
        "created_at": created,
        "assistant_id": assistant["id"],
        "thread_id": thread_id,
        "status": "queued",
        "started_at": None,
        "expires_at": created + services.settings.run_action_timeout,
        "cancelled_at": None,
        "failed_at": None,
        "completed_at": None,
        "required_action": None,
        "last_error": None,
        "model": body.model or assistant["model"],
        "instructions": instructions or "",
        "tools": tools,
        "metadata": body.metadata or {},
        "incomplete_details": None,
        "usage": None,
        "temperature": body.temperature if "temperature" in given else assistant.get("temperature"),
        "top_p": body.top_p if "top_p" in given else assistant.get("top_p"),
        "max_prompt_tokens": body.max_prompt_tokens,
        "max_completion_tokens": body.max_completion_tokens,
        "truncation_strategy": (
            truncation.model_dump() if truncation else {"type": "auto", "last_messages": None}
        ),
        "response_format": (
            check_response_format(body.response_format, "response_format") or "auto"
            if "response_format" in given
            else assistant.get("response_format", "auto")
        ),
        "tool_choice": check_tool_choice(body.tool_choice, tools),
        "parallel_tool_calls": body.parallel_tool_calls,
    }
    effort = body.reasoning_effort or assistant.get("reasoning_effort")
    if effort is not None:
        run["reasoning_effort"] = effort
    return run


async def begin(
    db: AsyncSession,
    services: Services,
    runs: RunManager,
    *,
    tenant: str,
    run: dict[str, Any],
    rows: list[Any],
    initial: list[bytes],
    stream: bool,
) -> Response:
    """Store the run (with `rows`: its new thread or messages) holding its thread, start it,
    and answer: the run, or its stream."""
    if any(t["type"] == "code_interpreter" for t in run["tools"]):
        await get_executor(services)
    await db.flush()  # a new thread (`create_thread_and_run`) must exist to be claimed
    thread_id = run["thread_id"]
    if not await claim_thread(db, tenant=tenant, thread_id=thread_id, run_id=run["id"]):
        thread = await require(db, Thread, tenant=tenant, id=thread_id)
        await db.refresh(thread)  # the claim lost to another run: see which
        active = await active_run(db, runs, thread)
        if active is not None or not await claim_thread(
            db, tenant=tenant, thread_id=thread_id, run_id=run["id"]
        ):
            await db.rollback()
            raise InvalidRequestError(
                f"Thread {thread_id} already has an active run {active}.", param="thread_id"
            )
    for extra in rows:
        db.add(extra)
    row = ThreadRun(
        id=run["id"],
        tenant=tenant,
        created_at=run["created_at"],
        data=dump(run),
        thread_id=thread_id,
        status="queued",
        heartbeat_at=time.time(),
    )
    db.add(row)
    await db.commit()
    frames = [
        *initial,
        event_frame("thread.run.created", run),
        event_frame("thread.run.queued", run),
    ]
    return await answer(
        runs, row, tenant=tenant, run=run, initial=frames, stream=stream, services=services
    )


async def answer(
    runs: RunManager,
    row: ThreadRun,
    *,
    tenant: str,
    run: dict[str, Any],
    initial: list[bytes],
    stream: bool,
    services: Services,
) -> Response:
    """Start driving the run; the run as stored, or the stream that follows it."""
    body = runs.launch(row, tenant=tenant, initial=initial, stream=stream)
    if body is None:
        return _run_response(services, run)
    return await _stream(body)


async def _stream(events: AsyncIterator[bytes]) -> StreamingResponse:
    first = await anext(events, b"")
    return StreamingResponse(
        guarded(first, events), media_type="text/event-stream", headers=SSE_HEADERS
    )


def _run_response(services: Services, run: dict[str, Any]) -> Response:
    """The run, with the poll interval the SDK's polling helpers follow."""
    return JSONResponse(
        run, headers={"openai-poll-after-ms": str(services.settings.run_poll_after_ms)}
    )


@router.post("/threads/runs")
async def create_thread_and_run(
    body: CreateThreadAndRun,
    tenant: TenantDep,
    db: DbDep,
    services: ServicesDep,
    runs: RunsDep,
) -> Response:
    """Create a thread and run it."""
    assistant = public(await require(db, Assistant, tenant=tenant.id, id=body.assistant_id))
    spec = body.thread or CreateThread()
    if body.tool_resources is not None:
        extra = check_tool_resources(body.tool_resources, "tool_resources")
        mine = check_tool_resources(spec.tool_resources, "thread.tool_resources")
        files = mine["code_interpreter"]["file_ids"] + extra["code_interpreter"]["file_ids"]
        spec = spec.model_copy(
            update={
                "tool_resources": {"code_interpreter": {"file_ids": list(dict.fromkeys(files))}}
            }
        )
    thread, messages = await make_thread(db, tenant.id, spec, "thread")
    run = run_object(services, assistant=assistant, thread_id=thread["id"], body=body)
    add_thread(db, tenant.id, thread, messages)
    return await begin(
        db,
        services,
        runs,
        tenant=tenant.id,
        run=run,
        rows=[],
        initial=[event_frame("thread.created", thread)],
        stream=bool(body.stream),
    )


@router.post("/threads/{thread_id}/runs")
async def create_run(
    thread_id: str,
    body: CreateRun,
    tenant: TenantDep,
    db: DbDep,
    services: ServicesDep,
    runs: RunsDep,
) -> Response:
    """Create a run of a thread, with the assistant's settings unless the request overrides
    them; `additional_messages` are added to the thread first."""
    await require(db, Thread, tenant=tenant.id, id=thread_id)
    assistant = public(await require(db, Assistant, tenant=tenant.id, id=body.assistant_id))
    run = run_object(
        services,
        assistant=assistant,
        thread_id=thread_id,
        body=body,
        additional_instructions=body.additional_instructions,
    )
    rows = [
        new_row(
            await new_message(db, tenant.id, thread_id, message, f"additional_messages[{i}]"),
            tenant=tenant.id,
            thread_id=thread_id,
        )
        for i, message in enumerate(body.additional_messages or [])
    ]
    return await begin(
        db,
        services,
        runs,
        tenant=tenant.id,
        run=run,
        rows=rows,
        initial=[],
        stream=bool(body.stream),
    )


@router.get("/threads/{thread_id}/runs")
async def list_runs(
    thread_id: str, tenant: TenantDep, db: DbDep, page: PageDep, runs: RunsDep
) -> dict[str, Any]:
    """List a thread's runs, newest first by default."""
    await require(db, Thread, tenant=tenant.id, id=thread_id)
    rows, more = await list_objects(
        db,
        ThreadRun,
        tenant=tenant.id,
        where=[col(ThreadRun.thread_id) == thread_id],
        limit=page.limit,
        order=page.order,
        after=page.after,
        before=page.before,
    )
    return listing([public(await settled(db, runs, row)) for row in rows], more)


async def _run(
    db: AsyncSession, runs: RunManager, tenant: str, thread_id: str, run_id: str
) -> ThreadRun:
    row = await require(db, ThreadRun, tenant=tenant, id=run_id, thread_id=thread_id)
    return await settled(db, runs, row)


@router.get("/threads/{thread_id}/runs/{run_id}")
async def retrieve_run(
    thread_id: str,
    run_id: str,
    tenant: TenantDep,
    db: DbDep,
    services: ServicesDep,
    runs: RunsDep,
) -> Response:
    """Retrieve a run."""
    row = await _run(db, runs, tenant.id, thread_id, run_id)
    return _run_response(services, public(row))


@router.post("/threads/{thread_id}/runs/{run_id}")
async def modify_run(
    thread_id: str, run_id: str, body: ModifyRun, tenant: TenantDep, db: DbDep, runs: RunsDep
) -> dict[str, Any]:
    """Modify a run's metadata."""
    row = await _run(db, runs, tenant.id, thread_id, run_id)
    run = public(row)
    if "metadata" in body.model_fields_set:
        run["metadata"] = body.metadata or {}
    # Only the metadata changes: the driver may be writing the rest of the run meanwhile.
    current = public(await require(db, ThreadRun, tenant=tenant.id, id=run_id))
    current["metadata"] = run["metadata"]
    await save(db, current)
    await db.commit()
    return current


@router.post("/threads/{thread_id}/runs/{run_id}/cancel")
async def cancel_run(
    thread_id: str, run_id: str, tenant: TenantDep, db: DbDep, runs: RunsDep
) -> dict[str, Any]:
    """Cancel a run: at once if it waits for tool outputs, else its code is interrupted and it
    ends `cancelled` (`cancelling` until then)."""
    row = await _run(db, runs, tenant.id, thread_id, run_id)
    if row.status == "requires_action":
        ended = await end_run_row(db, row, "cancelled", now())
        if ended is not None:
            return public(ended)
        row = await _run(db, runs, tenant.id, thread_id, run_id)
    if row.status not in DRIVEN or row.status == "cancelling":
        raise InvalidRequestError(
            f"Cannot cancel run with status '{row.status}'.", param="run_id", code="invalid_state"
        )
    run = public(row)
    run["status"] = "cancelling"
    result = await db.exec(
        update(ThreadRun)
        .where(col(ThreadRun.id) == run_id, col(ThreadRun.status) == row.status)
        .values(status="cancelling", data=dump(run))
    )
    await db.commit()
    if not result.rowcount:  # it ended meanwhile
        return public(await _run(db, runs, tenant.id, thread_id, run_id))
    if await runs.cancel(run_id, wait=CANCEL_WAIT):
        db.expire_all()
        return public(await _run(db, runs, tenant.id, thread_id, run_id))
    return run  # another process drives it: it sees the cancellation at its next heartbeat


@router.post("/threads/{thread_id}/runs/{run_id}/submit_tool_outputs")
async def submit_tool_outputs(
    thread_id: str,
    run_id: str,
    body: SubmitToolOutputs,
    tenant: TenantDep,
    db: DbDep,
    services: ServicesDep,
    runs: RunsDep,
) -> Response:
    """Give a run waiting in `requires_action` the outputs of its function calls (all of
    them at once); the run goes on."""
    row = await _run(db, runs, tenant.id, thread_id, run_id)
    if row.status != "requires_action":
        raise InvalidRequestError(
            f'Runs in status "{row.status}" do not accept tool outputs.',
            param="run_id",
            code="invalid_state",
        )
    run = public(row)
    expected = [c["id"] for c in run["required_action"]["submit_tool_outputs"]["tool_calls"]]
    outputs = {o.tool_call_id: o.output for o in body.tool_outputs}
    if sorted(outputs) != sorted(expected) or len(outputs) != len(body.tool_outputs):
        raise InvalidRequestError(
            f"Expected tool outputs for call_ids {expected}, got "
            f"{[o.tool_call_id for o in body.tool_outputs]}.",
            param="tool_outputs",
        )
    at = now()
    step = next(
        (
            s
            for s in (public(r) for r in await run_steps(db, run_id=run_id))
            if s["status"] == "in_progress" and s["type"] == "tool_calls"
        ),
        None,
    )
    frames: list[bytes] = []
    if step is not None:
        for call in step["step_details"]["tool_calls"]:
            if call["type"] == "function" and call["id"] in outputs:
                call["function"]["output"] = outputs[call["id"]]
        end_step(step, "completed", at)
        await save(db, step)
        frames.append(event_frame("thread.run.step.completed", step))
    transcript = loads(row.transcript) + [
        {"role": "tool", "tool_call_id": call_id, "content": outputs[call_id]}
        for call_id in expected
    ]
    run.update(status="queued", required_action=None)
    run["expires_at"] = at + services.settings.run_action_timeout
    beat = time.time()
    result = await db.exec(
        update(ThreadRun)
        .where(
            col(ThreadRun.id) == run_id,
            col(ThreadRun.status) == "requires_action",
            col(ThreadRun.heartbeat_at) == row.heartbeat_at,
        )
        .values(
            status="queued",
            data=dump(run),
            transcript=dumps(transcript).decode(),
            heartbeat_at=beat,
        )
    )
    if not result.rowcount:
        await db.rollback()
        raise InvalidRequestError(
            "The run stopped waiting for tool outputs meanwhile.",
            param="run_id",
            code="invalid_state",
        )
    await db.commit()
    row.status, row.data, row.transcript, row.heartbeat_at = (
        "queued",
        dump(run),
        dumps(transcript).decode(),
        beat,
    )
    frames.append(event_frame("thread.run.queued", run))
    return await answer(
        runs,
        row,
        tenant=tenant.id,
        run=run,
        initial=frames,
        stream=bool(body.stream),
        services=services,
    )
