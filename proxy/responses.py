"""One Responses API turn: recall the previous response, resume its container, run the engine,
render its events as a `response` (or its events), store the response for later turns."""

import base64
import time
from collections.abc import AsyncIterator
from typing import Any, NoReturn

from executor.api import SessionNotFound
from proxy.coderunner import CodeRunner
from proxy.containers import RESET_NOTE, ContainerSpec, resume
from proxy.conversations import OMITTED
from proxy.deps import Services, get_executor
from proxy.engine import Engine, Turn
from proxy.errors import APIError, NotFoundError
from proxy.events import ClientCall, Done, Event, Failed, MessageDone
from proxy.filestore import open_file, require_file
from proxy.interpreter import TOOL_NAME
from proxy.jsonutil import dumps, loads
from proxy.native import model_for
from proxy.renderers.responses import CitedFile, Head, ResponseJSON, ResponseSSE, ResponseView
from proxy.responses_request import ResponsesRequest, item_id, read_request
from storage.containers import container_files
from storage.models import StoredResponse
from storage.responses import get_response


class ResponseTurn:
    """Drives the engine for one response and renders it; `complete()` or `stream()`."""

    def __init__(
        self,
        engine: Engine,
        head: Head,
        *,
        services: Services,
        tenant: str,
        request: ResponsesRequest,
        conversation: list[dict[str, Any]],
    ) -> None:
        self.engine = engine
        self.head = head
        self.services = services
        self.tenant = tenant
        self.request = request
        self.conversation = conversation
        self.client_calls: list[dict[str, Any]] = []

    async def complete(self) -> dict[str, Any]:
        """The `response` object; an error is raised with the status to answer."""
        renderer = ResponseJSON(self.head)
        try:
            async for event in self._events(renderer, raise_failure=True):
                renderer.feed(event)
        except Exception as exc:
            self._raise(exc)
        return renderer.result()

    async def stream(self) -> AsyncIterator[bytes]:
        """SSE bytes; an error before the first byte is raised, later ones go in-band."""
        renderer = ResponseSSE(self.head)
        try:
            async for event in self._events(renderer, raise_failure=False):
                if isinstance(event, Failed) and not renderer.started:
                    raise event.error
                frames = renderer.feed(event)
                if frames:
                    # One write per engine event: an event may make several frames.
                    yield b"".join(frames)
        except Exception as exc:
            self._raise(exc)

    def _raise(self, exc: Exception) -> NoReturn:
        err: APIError = self.engine.failure(exc)
        if err is exc:
            raise err
        raise err from exc

    async def _events(self, view: ResponseView, *, raise_failure: bool) -> AsyncIterator[Event]:
        async for event in self.engine.events():
            if isinstance(event, MessageDone) and view.cites(event.text):
                # Links to files of earlier turns: looked up only when a message has some.
                view.known.update(
                    await _known_files(self.services, self.tenant, self.engine.runner.session_id)
                )
            if isinstance(event, ClientCall):
                self.client_calls.append(event.raw)
            elif isinstance(event, Failed) and raise_failure:
                raise event.error
            elif isinstance(event, Done) and self.request.store:
                # Stored before the last frames go out: a client may fetch it at once.
                view.fold(event)
                await self._store(event, view)
            yield event

    async def _store(self, done: Done, view: ResponseView) -> None:
        final: dict[str, Any] = {"role": "assistant", "content": done.text}
        if self.client_calls:
            final["tool_calls"] = self.client_calls
        conversation = [*self.conversation, *done.hidden, final]
        body = {**view.final()[1], "output": view.output}
        async with self.services.db() as db:
            db.add(
                StoredResponse(
                    id=self.head.id,
                    tenant=self.tenant,
                    created_at=self.head.created_at,
                    body=dumps(body).decode(),
                    input_items=dumps(self.request.items).decode(),
                    conversation=dumps(conversation).decode(),
                    container_id=view.container_id,
                )
            )
            await db.commit()


async def start_response(services: Services, tenant: str, body: dict[str, Any]) -> ResponseTurn:
    """Everything checked, recalled and attached; the turn is ready to run."""
    request = read_request(body)
    conversation: list[dict[str, Any]] = []
    previous_container: str | None = None
    if request.previous_response_id is not None:
        async with services.db() as db:
            previous = await get_response(
                db, tenant=tenant, response_id=request.previous_response_id
            )
        if previous is None:
            raise NotFoundError(
                f"Previous response with id '{request.previous_response_id}' not found.",
                param="previous_response_id",
            )
        conversation = loads(previous.conversation)
        previous_container = previous.container_id
    executor = services.executor
    if request.interpreter or executor is None:
        executor = await get_executor(services)
    runner = CodeRunner(services, executor, tenant, source="responses")
    file_ids = list(request.file_ids)
    messages = [await _resolve(services, tenant, m, file_ids, request) for m in request.messages]
    replaced = False
    if request.interpreter:
        replaced = await _attach(runner, request, file_ids, previous_container)
    conversation = [*conversation, *messages]
    instructions = (
        [{"role": "system", "content": request.instructions}] if request.instructions else []
    )
    turn = Turn(
        messages=[*instructions, *bounded(conversation, services.settings.max_hidden_chars)],
        options=request.options,
        client_tools=request.client_tools,
        tool_choice=request.tool_choice,
        parallel_tool_calls=body.get("parallel_tool_calls"),
        stream=request.stream,
        note=RESET_NOTE if replaced else "",
        interpreter=request.interpreter,
    )
    head = Head(
        id=item_id("resp_"),
        created_at=int(time.time()),
        model=request.model,
        body=body,
        include_outputs=request.include_outputs,
    )
    engine = Engine(
        settings=services.settings,
        model=model_for(services.upstream, services.settings),
        runner=runner,
        turn=turn,
    )
    return ResponseTurn(
        engine, head, services=services, tenant=tenant, request=request, conversation=conversation
    )


async def _attach(
    runner: CodeRunner, request: ResponsesRequest, file_ids: list[str], previous: str | None
) -> bool:
    """Attach the runner to the request's container; True when an expired one was replaced.

    A container named in the tool must be running, as with OpenAI. In `auto` mode the container
    of the conversation so far (its last interpreter call, or the previous response's) is used
    again while it lives, and replaced, its files put back, once it has expired.
    """
    if request.container is not None:
        try:
            await runner.attach(session_id=request.container, file_ids=file_ids)
        except SessionNotFound:
            raise NotFoundError(
                f"Container {request.container} not found (or expired).", param="container_id"
            ) from None
        return False
    runner.spec = ContainerSpec(memory_limit=request.memory_limit)
    earlier = request.input_container or previous
    if earlier is not None:
        try:
            return await resume(runner, earlier, file_ids=file_ids)
        except NotFoundError:
            pass  # a container of a conversation held elsewhere: start afresh
    await runner.attach(session_id=None, file_ids=file_ids)
    return False


async def _known_files(
    services: Services, tenant: str, container_id: str | None
) -> dict[str, CitedFile]:
    if container_id is None:
        return {}
    async with services.db() as db:
        rows = await container_files(db, tenant=tenant, container_id=container_id)
    return {row.path: CitedFile(container_id, row.id, row.path.rsplit("/", 1)[-1]) for row in rows}


async def _resolve(
    services: Services,
    tenant: str,
    message: dict[str, Any],
    file_ids: list[str],
    request: ResponsesRequest,
) -> dict[str, Any]:
    """A message whose parts name tenant files, with those files in place: images inline,
    other files copied into the container (the model is told where) or inline without one."""
    content = message.get("content")
    if not isinstance(content, list):
        return message
    parts: list[dict[str, Any]] = []
    for part in content:
        kind = part.get("type")
        if kind not in ("input_file", "input_image_file"):
            parts.append(part)
            continue
        async with services.db() as db:
            row = await require_file(db, tenant=tenant, file_id=part["file_id"])
        if kind == "input_file" and request.interpreter:
            file_ids.append(row.id)
            parts.append({"type": "text", "text": f"[file: /mnt/data/{row.filename}]"})
            continue
        data = b"".join([chunk async for chunk in await open_file(services.blobs, row)])
        url = f"data:{row.content_type};base64,{base64.b64encode(data).decode()}"
        if kind == "input_image_file":
            parts.append({"type": "image_url", "image_url": {"url": url}})
        else:
            parts.append({"type": "file", "file": {"file_data": url, "filename": row.filename}})
    return {**message, "content": parts}


def bounded(messages: list[dict[str, Any]], max_chars: int) -> list[dict[str, Any]]:
    """The conversation with the oldest interpreter outputs omitted past `max_chars`."""
    out = [dict(m) for m in messages]
    size = sum(len(dumps(m)) for m in out)
    ours = {
        call.get("id")
        for m in out
        for call in m.get("tool_calls") or []
        if (call.get("function") or {}).get("name") == TOOL_NAME
    }
    for message in out:
        if size <= max_chars:
            break
        content = message.get("content")
        if (
            message.get("tool_call_id") in ours
            and isinstance(content, str)
            and len(content) > len(OMITTED)
        ):
            size -= len(content) - len(OMITTED)
            message["content"] = OMITTED
    return out


def stored_response(row: StoredResponse, include_outputs: bool) -> dict[str, Any]:
    """A stored response as GET shows it."""
    body: dict[str, Any] = loads(row.body)
    if not include_outputs:
        body["output"] = [
            {**item, "outputs": None} if item.get("type") == "code_interpreter_call" else item
            for item in body["output"]
        ]
    return body
