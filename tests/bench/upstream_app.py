"""A minimal, stateless OpenAI-compatible upstream for benchmarks (run in its own process).

Answers every chat completion at once: with a `print(1)` code-interpreter call when the
request offers that tool and the conversation has no tool result yet, else with text; as
`chat.completion.chunk` SSE when the request streams. It has no `/responses`: a 404, as from
any chat-only upstream.
"""

import json
import sys
from typing import Any

import uvicorn

TEXT = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "bench",
    "system_fingerprint": None,
    "choices": [
        {
            "index": 0,
            "logprobs": None,
            "finish_reason": "stop",
            "message": {"role": "assistant", "content": "The answer is 1.", "refusal": None},
        }
    ],
    "usage": {"prompt_tokens": 20, "completion_tokens": 6, "total_tokens": 26},
}
CALL = json.loads(json.dumps(TEXT))
CALL["choices"][0]["finish_reason"] = "tool_calls"
CALL["choices"][0]["message"].update(
    content=None,
    tool_calls=[
        {
            "id": "call_bench",
            "type": "function",
            "function": {"name": "code_interpreter", "arguments": '{"code": "print(1)"}'},
        }
    ],
)
TEXT_BYTES, CALL_BYTES = json.dumps(TEXT).encode(), json.dumps(CALL).encode()


def chunks(answer: dict[str, Any]) -> bytes:
    """The answer as OpenAI streams it: role, content in pieces or the call, finish, usage."""
    base = {k: answer[k] for k in ("id", "created", "model", "system_fingerprint")}
    base["object"] = "chat.completion.chunk"
    choice = answer["choices"][0]
    message = choice["message"]

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            **base,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }

    out = [chunk({"role": "assistant", "content": "", "refusal": None})]
    for word in (message["content"] or "").split(" "):
        out.append(chunk({"content": word + " "}))
    for index, call in enumerate(message.get("tool_calls") or []):
        out.append(chunk({"tool_calls": [{"index": index, **call}]}))
    out.append(chunk({}, choice["finish_reason"]))
    out.append({**base, "choices": [], "usage": answer["usage"]})
    return b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in out) + (
        b"data: [DONE]\n\n"
    )


TEXT_SSE, CALL_SSE = chunks(TEXT), chunks(CALL)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    answer, kind, status = TEXT_BYTES, b"application/json", 200
    if scope["path"].endswith("/responses"):
        answer, status = (
            b'{"error": {"message": "Not found", "type": "invalid_request_error"}}',
            404,
        )
    elif body:
        request = json.loads(body)
        offers_code = any(
            (t.get("function") or {}).get("name") == "code_interpreter"
            for t in request.get("tools") or []
        )
        call = offers_code and request["messages"][-1].get("role") != "tool"
        if request.get("stream"):
            answer, kind = (CALL_SSE if call else TEXT_SSE), b"text/event-stream"
        elif call:
            answer = CALL_BYTES
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", kind),
                (b"content-length", str(len(answer)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": answer})


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
