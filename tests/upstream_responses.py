"""A scripted upstream that serves the Responses API natively, beside chat completions.

Each `/v1/responses` request takes the next scripted `response` object (see `answer()`), sent
as JSON or, when the request streams, as the `response.*` events OpenAI would send for it.
With `native = False` the route answers 404, as a chat-only upstream does; its hits are still
counted, so tests can see that the proxy asked only once.
"""

import copy
import itertools
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from proxy.jsonutil import dumps
from tests.upstream import ScriptedUpstream

_ids = itertools.count(1)


def answer(
    text: str | None = None,
    *,
    calls: list[tuple[str, str, str]] | None = None,
    model: str = "gpt-native",
    input_tokens: int = 10,
    output_tokens: int = 5,
    incomplete: str | None = None,
) -> dict[str, Any]:
    """A `response` whose output is `text` and function calls `(call_id, name, arguments)`."""
    output: list[dict[str, Any]] = []
    if text is not None:
        output.append(
            {
                "id": f"msg_up{next(_ids)}",
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": [
                    {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
                ],
            }
        )
    for call_id, name, arguments in calls or []:
        output.append(
            {
                "id": f"fc_up{next(_ids)}",
                "type": "function_call",
                "status": "completed",
                "call_id": call_id,
                "name": name,
                "arguments": arguments,
            }
        )
    return {
        "id": f"resp_up{next(_ids)}",
        "object": "response",
        "created_at": int(time.time()),
        "status": "incomplete" if incomplete else "completed",
        "incomplete_details": {"reason": incomplete} if incomplete else None,
        "error": None,
        "model": model,
        "output": output,
        "usage": {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens,
        },
    }


def events_of(response: dict[str, Any]) -> list[dict[str, Any]]:
    """The `response.*` events OpenAI streams for `response`."""
    head = {**response, "status": "in_progress", "output": [], "usage": None}
    out: list[dict[str, Any]] = [
        {"type": "response.created", "response": head},
        {"type": "response.in_progress", "response": head},
    ]
    for index, item in enumerate(response["output"]):
        if item["type"] == "message":
            text = item["content"][0]["text"]
            ids = {"item_id": item["id"], "output_index": index}
            out.append(
                {
                    "type": "response.output_item.added",
                    "output_index": index,
                    "item": {**item, "status": "in_progress", "content": []},
                }
            )
            out.append({"type": "response.content_part.added", **ids, "content_index": 0})
            for i in range(0, len(text), 4):
                out.append(
                    {
                        "type": "response.output_text.delta",
                        **ids,
                        "content_index": 0,
                        "delta": text[i : i + 4],
                    }
                )
            out.append({"type": "response.output_text.done", **ids, "text": text})
        else:
            out.append(
                {
                    "type": "response.output_item.added",
                    "output_index": index,
                    "item": {**item, "status": "in_progress", "arguments": ""},
                }
            )
            out.append(
                {
                    "type": "response.function_call_arguments.delta",
                    "item_id": item["id"],
                    "output_index": index,
                    "delta": item["arguments"],
                }
            )
        out.append({"type": "response.output_item.done", "output_index": index, "item": item})
    final = "response.incomplete" if response["status"] == "incomplete" else "response.completed"
    out.append({"type": final, "response": response})
    for n, event in enumerate(out):
        event["sequence_number"] = n
    return out


class NativeUpstream(ScriptedUpstream):
    def __init__(self, *, native: bool = True) -> None:
        super().__init__()
        self.native = native
        self.responses_script: list[dict[str, Any]] = []
        self.responses_requests: list[dict[str, Any]] = []
        self.responses_hits = 0
        self.app.router.routes.append(Route("/v1/responses", self._responses, methods=["POST"]))

    def answer(self, *responses: dict[str, Any]) -> None:
        self.responses_script.extend(responses)

    async def _responses(self, request: Request) -> Response:
        self.responses_hits += 1
        if not self.native:
            return Response("Not Found", status_code=404)
        body = await request.json()
        self.responses_requests.append(copy.deepcopy(body))
        response = self.responses_script.pop(0)
        if not body.get("stream"):
            return JSONResponse(response)

        async def sse() -> Any:
            for event in events_of(response):
                yield b"event: " + event["type"].encode() + b"\ndata: " + dumps(event) + b"\n\n"

        return StreamingResponse(sse(), media_type="text/event-stream")
