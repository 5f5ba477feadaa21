"""What the Assistants routes share: the beta header, list parameters, the run manager, and
messages made from a request."""

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import Depends, Query, Request
from sqlmodel.ext.asyncio.session import AsyncSession

from proxy.assistants.manager import RunManager
from proxy.assistants.objects import message_attachments, message_content, message_object
from proxy.assistants.schemas import CreateMessage
from proxy.errors import InvalidRequestError
from proxy.filestore import require_file


async def check_beta(request: Request) -> None:
    """`OpenAI-Beta: assistants=v2` (what the SDK sends) or no beta header; v1 is refused."""
    header = request.headers.get("openai-beta")
    if header is None:
        return
    versions = [
        part.split("=", 1)[1].strip()
        for part in header.split(",")
        if part.strip().startswith("assistants=")
    ]
    if versions and "v2" not in versions:
        raise InvalidRequestError(
            f"The Assistants API {', '.join(versions)} is not served here. Please try again "
            "with the header 'OpenAI-Beta: assistants=v2'.",
            param="OpenAI-Beta",
            code="invalid_beta",
        )


async def get_runs(request: Request) -> RunManager:
    runs: RunManager = request.app.state.runs
    return runs


RunsDep = Annotated[RunManager, Depends(get_runs)]


@dataclass
class Page:
    limit: int
    order: Literal["asc", "desc"]
    after: str | None
    before: str | None


async def page_params(
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Literal["asc", "desc"] = "desc",
    after: str | None = None,
    before: str | None = None,
) -> Page:
    return Page(limit, order, after, before)


PageDep = Annotated[Page, Depends(page_params)]


async def new_message(
    db: AsyncSession, tenant: str, thread_id: str, body: CreateMessage, param: str
) -> dict[str, Any]:
    """A user's (or a client-written assistant's) message, its files checked."""
    content, images = message_content(body.content, f"{param}.content")
    attachments, files = message_attachments(body.attachments, f"{param}.attachments")
    for file_id in [*images, *files]:
        await require_file(db, tenant=tenant, file_id=file_id)
    return message_object(
        thread_id=thread_id,
        role=body.role,
        content=content,
        attachments=attachments,
        metadata=body.metadata,
    )


async def check_files(db: AsyncSession, tenant: str, resources: dict[str, Any]) -> None:
    """Every file a `tool_resources` names is the tenant's (404 otherwise)."""
    for file_id in resources.get("code_interpreter", {}).get("file_ids", []):
        await require_file(db, tenant=tenant, file_id=file_id)
