"""A minimal, stateless OpenAI-compatible upstream for benchmarks (run in its own process).

Answers every chat completion at once: with a `print(1)` code-interpreter call when the
request offers that tool and the conversation has no tool result yet, else with text.
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


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    answer = TEXT_BYTES
    if body:
        request = json.loads(body)
        offers_code = any(
            (t.get("function") or {}).get("name") == "code_interpreter"
            for t in request.get("tools") or []
        )
        if offers_code and request["messages"][-1].get("role") != "tool":
            answer = CALL_BYTES
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(answer)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": answer})


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
