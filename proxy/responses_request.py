"""A Responses API request read and checked: what the engine needs, in chat-completions shapes.

Every field OpenAI's `CreateResponse` has is either honoured, passed on to the upstream, or
refused with a 400 that names it: a field dropped in silence could change what the caller gets.
Input items become chat messages: `function_call` items become an assistant's `tool_calls`,
`function_call_output` items `tool` messages, and `code_interpreter_call` items sent back as
history become the interpreter call and result they were, so the model sees what ran.
"""

import secrets
from dataclasses import dataclass, field
from typing import Any

from proxy.containers import MEMORY_LIMITS
from proxy.errors import InvalidRequestError
from proxy.interpreter import TOOL_NAME
from proxy.jsonutil import dumps

INCLUDE_OUTPUTS = "code_interpreter_call.outputs"
# What `include` may name: the outputs are honoured; the others name things this service
# never produces (no reasoning items, no hosted search), so asking for them changes nothing.
INCLUDABLE = {
    INCLUDE_OUTPUTS,
    "reasoning.encrypted_content",
    "file_search_call.results",
    "web_search_call.action.sources",
    "web_search_call.results",
    "message.input_image.image_url",
    "computer_call_output.output.image_url",
}
# Fields passed to the upstream's chat completions under the same name.
PASSED = ("temperature", "top_p", "user", "service_tier", "safety_identifier", "prompt_cache_key")
# Fields accepted as long as they ask for what this service does anyway.
DEFAULTS: dict[str, tuple[Any, ...]] = {
    "background": (False, None),
    "truncation": ("disabled", None),
    "max_tool_calls": (None,),
    "top_logprobs": (0, None),
    "conversation": (None,),
    "prompt": (None,),
    "stream_options": (None,),
}
KNOWN = {
    "model",
    "input",
    "instructions",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "max_output_tokens",
    "text",
    "metadata",
    "store",
    "previous_response_id",
    "include",
    "stream",
    "reasoning",
    *PASSED,
    *DEFAULTS,
}


def item_id(prefix: str) -> str:
    return prefix + secrets.token_hex(24)


@dataclass
class ResponsesRequest:
    """A checked `POST /v1/responses` body."""

    body: dict[str, Any]
    model: str
    # This request's input as chat messages, and as the input items to list later.
    messages: list[dict[str, Any]]
    items: list[dict[str, Any]]
    instructions: str | None
    client_tools: list[dict[str, Any]]
    tool_choice: Any
    # The code interpreter: whether it is offered, and its container.
    interpreter: bool = False
    container: str | None = None
    file_ids: list[str] = field(default_factory=list)
    memory_limit: str | None = None
    # The container of the last `code_interpreter_call` item in the input, if any.
    input_container: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    include_outputs: bool = False
    store: bool = True
    stream: bool = False
    previous_response_id: str | None = None


def _bad(message: str, param: str, code: str | None = None) -> InvalidRequestError:
    return InvalidRequestError(message, param=param, code=code)


def read_request(body: dict[str, Any]) -> ResponsesRequest:
    """Check the body and translate it; raises a 400 naming the first field it cannot honour."""
    for name in body:
        if name not in KNOWN:
            raise _bad(f"Unknown parameter: '{name}'.", name, "unknown_parameter")
    for name, allowed in DEFAULTS.items():
        if name in body and body[name] not in allowed and not _harmless(name, body[name]):
            raise _bad(
                f"'{name}' is not supported by this server (only {allowed[0]!r}).",
                name,
                "unsupported_parameter",
            )
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("Missing required parameter: 'model'.", "model", "missing_required_parameter")
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise _bad("Invalid 'instructions': expected a string.", "instructions")
    request = ResponsesRequest(
        body=body,
        model=model,
        messages=[],
        items=[],
        instructions=instructions,
        client_tools=[],
        tool_choice=body.get("tool_choice", "auto"),
        stream=bool(body.get("stream")),
        store=body.get("store", True) is not False,
        previous_response_id=_optional_str(body, "previous_response_id"),
    )
    _read_tools(request, body.get("tools"))
    request.tool_choice = _tool_choice(body.get("tool_choice", "auto"), request)
    request.include_outputs = _include(body.get("include"))
    request.options = _options(body)
    _read_input(request, body.get("input"))
    return request


def _harmless(name: str, value: Any) -> bool:
    if name == "stream_options":
        # Obfuscation pads deltas against side channels; there is nothing to pad here.
        return isinstance(value, dict) and set(value) <= {"include_obfuscation"}
    return False


def _optional_str(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise _bad(f"Invalid '{name}': expected a string.", name)
    return value


def _include(include: Any) -> bool:
    if include is None:
        return False
    if not isinstance(include, list):
        raise _bad("Invalid 'include': expected an array.", "include")
    for i, value in enumerate(include):
        if value not in INCLUDABLE:
            raise _bad(
                f"Invalid 'include[{i}]': {value!r} is not supported.",
                f"include[{i}]",
                "invalid_value",
            )
    return INCLUDE_OUTPUTS in include


def _options(body: dict[str, Any]) -> dict[str, Any]:
    """The upstream chat request's own fields."""
    options: dict[str, Any] = {"model": body["model"]}
    for name in PASSED:
        if body.get(name) is not None:
            options[name] = body[name]
    if body.get("max_output_tokens") is not None:
        value = body["max_output_tokens"]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise _bad(
                "Invalid 'max_output_tokens': expected a positive integer.", "max_output_tokens"
            )
        options["max_completion_tokens"] = value
    reasoning = body.get("reasoning")
    if reasoning is not None:
        if not isinstance(reasoning, dict):
            raise _bad("Invalid 'reasoning': expected an object.", "reasoning")
        if reasoning.get("effort") is not None:
            options["reasoning_effort"] = reasoning["effort"]
    text = body.get("text")
    if text is not None:
        if not isinstance(text, dict):
            raise _bad("Invalid 'text': expected an object.", "text")
        for name in text:
            if name not in ("format", "verbosity"):
                raise _bad(
                    f"Unknown parameter: 'text.{name}'.", f"text.{name}", "unknown_parameter"
                )
        if text.get("verbosity") is not None:
            options["verbosity"] = text["verbosity"]
        response_format = _format(text.get("format"))
        if response_format is not None:
            options["response_format"] = response_format
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise _bad("Invalid 'metadata': expected an object.", "metadata")
    return options


def _format(fmt: Any) -> dict[str, Any] | None:
    """`text.format` as chat's `response_format`."""
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object", "json_schema"):
        raise _bad(
            "Invalid 'text.format': expected a type of 'text', 'json_object' or 'json_schema'.",
            "text.format",
        )
    if fmt["type"] == "text":
        return None
    if fmt["type"] == "json_object":
        return {"type": "json_object"}
    if not isinstance(fmt.get("name"), str) or not isinstance(fmt.get("schema"), dict):
        raise _bad(
            "Invalid 'text.format': a json_schema format needs a 'name' and a 'schema'.",
            "text.format",
        )
    schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
    return {"type": "json_schema", "json_schema": schema}


def _read_tools(request: ResponsesRequest, tools: Any) -> None:
    if tools is None:
        return
    if not isinstance(tools, list):
        raise _bad("Invalid 'tools': expected an array.", "tools")
    for i, tool in enumerate(tools):
        param = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise _bad(f"Invalid '{param}': expected an object.", param)
        kind = tool.get("type")
        if kind == "function":
            request.client_tools.append(_function_tool(tool, param))
        elif kind == "code_interpreter":
            if request.interpreter:
                raise _bad("Only one code_interpreter tool may be given.", param)
            request.interpreter = True
            _read_container(request, tool.get("container"), param)
        else:
            raise _bad(
                f"Invalid '{param}.type': {kind!r} is not supported by this server (supported: "
                "'code_interpreter', 'function').",
                f"{param}.type",
                "unsupported_tool",
            )


def _function_tool(tool: dict[str, Any], param: str) -> dict[str, Any]:
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise _bad(f"Missing required parameter: '{param}.name'.", f"{param}.name")
    if name == TOOL_NAME:
        raise _bad(
            f"The function name '{TOOL_NAME}' is reserved for the code interpreter; use "
            '{"type": "code_interpreter"} to enable it.',
            f"{param}.name",
        )
    function: dict[str, Any] = {"name": name}
    for key in ("description", "parameters", "strict"):
        if tool.get(key) is not None:
            function[key] = tool[key]
    return {"type": "function", "function": function}


def _read_container(request: ResponsesRequest, container: Any, param: str) -> None:
    if isinstance(container, str):
        request.container = container
        return
    if not isinstance(container, dict):
        raise _bad(
            f"Invalid '{param}.container': expected a container id or an object.",
            f"{param}.container",
        )
    if container.get("type", "auto") != "auto":
        raise _bad(f"Invalid '{param}.container.type': expected 'auto'.", f"{param}.container.type")
    for key in container:
        if key not in ("type", "file_ids", "memory_limit", "network_policy"):
            raise _bad(
                f"Unknown parameter: '{param}.container.{key}'.",
                f"{param}.container.{key}",
                "unknown_parameter",
            )
    file_ids = container.get("file_ids") or []
    if not isinstance(file_ids, list) or not all(isinstance(f, str) for f in file_ids):
        raise _bad(
            f"Invalid '{param}.container.file_ids': expected an array of file ids.",
            f"{param}.container.file_ids",
        )
    memory = container.get("memory_limit")
    if memory is not None and memory not in MEMORY_LIMITS:
        raise _bad(
            f"Invalid '{param}.container.memory_limit': expected one of "
            + ", ".join(f"'{m}'" for m in MEMORY_LIMITS)
            + ".",
            f"{param}.container.memory_limit",
        )
    policy = container.get("network_policy")
    if policy is not None and policy != {"type": "disabled"}:
        raise _bad(
            "Sandboxes have no network access: only a network_policy of type 'disabled' can "
            "be honoured.",
            f"{param}.container.network_policy",
        )
    request.file_ids = list(dict.fromkeys(file_ids))
    request.memory_limit = memory


def _tool_choice(choice: Any, request: ResponsesRequest) -> Any:
    """The chat form of `tool_choice`."""
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict):
        kind = choice.get("type")
        if kind == "code_interpreter":
            if not request.interpreter:
                raise _bad(
                    "tool_choice names the code interpreter, which 'tools' does not offer.",
                    "tool_choice",
                )
            return {"type": "code_interpreter"}
        names = [t["function"]["name"] for t in request.client_tools]
        if kind == "function" and choice.get("name") in names:
            return {"type": "function", "function": {"name": choice["name"]}}
    raise _bad(
        "Invalid 'tool_choice': expected 'auto', 'none', 'required', "
        '{"type": "code_interpreter"} or {"type": "function", "name": …} naming a function '
        "of 'tools'.",
        "tool_choice",
    )


def _read_input(request: ResponsesRequest, raw: Any) -> None:
    if isinstance(raw, str):
        raw = [{"role": "user", "content": raw}]
    if not isinstance(raw, list):
        raise _bad("Invalid 'input': expected a string or an array of items.", "input")
    messages = request.messages
    for i, item in enumerate(raw):
        param = f"input[{i}]"
        if not isinstance(item, dict):
            raise _bad(f"Invalid '{param}': expected an object.", param)
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            message, stored = _message(item, param)
            messages.append(message)
            request.items.append(stored)
        elif kind == "function_call":
            call = {
                "id": _str(item, "call_id", param),
                "type": "function",
                "function": {
                    "name": _str(item, "name", param),
                    "arguments": _str(item, "arguments", param),
                },
            }
            _assistant_call(messages, call)
            request.items.append({"id": item.get("id") or item_id("fc_"), **item, "type": kind})
        elif kind == "function_call_output":
            output = item.get("output")
            if not isinstance(output, str):
                output = _parts_text(output, f"{param}.output")
            messages.append(
                {"role": "tool", "tool_call_id": _str(item, "call_id", param), "content": output}
            )
            request.items.append({"id": item.get("id") or item_id("fco_"), **item, "type": kind})
        elif kind == "code_interpreter_call":
            _code_call(messages, item, param)
            if isinstance(item.get("container_id"), str):
                request.input_container = item["container_id"]
            request.items.append({**item, "type": kind})
        elif kind == "reasoning":
            # Opaque to any other model; the upstream answers without it, as OpenAI's own
            # models do when handed reasoning they cannot read.
            request.items.append({**item, "type": kind})
        else:
            raise _bad(
                f"Invalid '{param}.type': {kind!r} is not supported by this server.",
                f"{param}.type",
            )
    if not messages and request.previous_response_id is None:
        raise _bad("Invalid 'input': expected at least one message.", "input")


def _str(item: dict[str, Any], key: str, param: str) -> str:
    value = item.get(key)
    if not isinstance(value, str):
        raise _bad(f"Missing required parameter: '{param}.{key}'.", f"{param}.{key}")
    return value


def _message(item: dict[str, Any], param: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the chat message, the input item as `input_items` lists it)."""
    role = item.get("role")
    if role not in ("user", "assistant", "system", "developer"):
        raise _bad(
            f"Invalid '{param}.role': expected 'user', 'assistant', 'system' or 'developer'.",
            f"{param}.role",
        )
    content = item.get("content")
    text_type = "output_text" if role == "assistant" else "input_text"
    if isinstance(content, str):
        parts: list[dict[str, Any]] = [{"type": text_type, "text": content}]
        chat_content: Any = content
    elif isinstance(content, list):
        parts = content
        chat_content = [_part(part, f"{param}.content[{j}]") for j, part in enumerate(content)]
        if role == "assistant":
            chat_content = "".join(p.get("text", "") for p in chat_content)
    else:
        raise _bad(f"Invalid '{param}.content': expected a string or an array.", f"{param}.content")
    if role == "assistant":
        for part in parts:
            if part.get("type") == "output_text":
                part.setdefault("annotations", [])
    stored = {
        "id": item.get("id") or item_id("msg_"),
        "type": "message",
        "role": role,
        "content": parts,
        "status": "completed",
    }
    return {"role": role, "content": chat_content}, stored


def _part(part: Any, param: str) -> dict[str, Any]:
    """One content part in chat form."""
    if not isinstance(part, dict):
        raise _bad(f"Invalid '{param}': expected an object.", param)
    kind = part.get("type")
    if kind in ("input_text", "output_text"):
        if not isinstance(part.get("text"), str):
            raise _bad(f"Missing required parameter: '{param}.text'.", f"{param}.text")
        return {"type": "text", "text": part["text"]}
    if kind == "refusal":
        return {"type": "text", "text": str(part.get("refusal", ""))}
    if kind == "input_image":
        if isinstance(part.get("image_url"), str):
            image: dict[str, Any] = {"url": part["image_url"]}
            if part.get("detail") in ("auto", "low", "high"):
                image["detail"] = part["detail"]
            return {"type": "image_url", "image_url": image}
        if isinstance(part.get("file_id"), str):
            # Resolved to the file's bytes before the upstream call (see proxy/responses.py).
            return {"type": "input_image_file", "file_id": part["file_id"]}
        raise _bad(f"Invalid '{param}': an input_image needs an 'image_url' or a 'file_id'.", param)
    if kind == "input_file":
        if isinstance(part.get("file_id"), str):
            # Copied into the container; the model is told where (see proxy/responses.py).
            return {"type": "input_file", "file_id": part["file_id"]}
        if isinstance(part.get("file_data"), str):
            file: dict[str, Any] = {"file_data": part["file_data"]}
            if isinstance(part.get("filename"), str):
                file["filename"] = part["filename"]
            return {"type": "file", "file": file}
        raise _bad(
            f"Invalid '{param}': an input_file needs a 'file_id' or 'file_data' here.", param
        )
    raise _bad(f"Invalid '{param}.type': {kind!r} is not supported.", f"{param}.type")


def _parts_text(parts: Any, param: str) -> str:
    if not isinstance(parts, list):
        raise _bad(f"Invalid '{param}': expected a string or an array of parts.", param)
    texts = []
    for j, part in enumerate(parts):
        chat = _part(part, f"{param}[{j}]")
        if chat.get("type") != "text":
            raise _bad(f"Invalid '{param}[{j}]': only text is supported here.", f"{param}[{j}]")
        texts.append(chat["text"])
    return "".join(texts)


def _assistant_call(messages: list[dict[str, Any]], call: dict[str, Any]) -> None:
    """Add a tool call to the assistant message just before, or to a new one."""
    last = messages[-1] if messages else None
    if last is not None and last.get("role") == "assistant" and "tool_call_id" not in last:
        last.setdefault("tool_calls", []).append(call)
    else:
        messages.append({"role": "assistant", "content": None, "tool_calls": [call]})


def _code_call(messages: list[dict[str, Any]], item: dict[str, Any], param: str) -> None:
    """An earlier interpreter call sent back as history: the call and what it printed."""
    call_id = item.get("id")
    if not isinstance(call_id, str):
        raise _bad(f"Missing required parameter: '{param}.id'.", f"{param}.id")
    code = item.get("code")
    arguments = dumps({"code": code if isinstance(code, str) else ""}).decode()
    _assistant_call(
        messages,
        {
            "id": call_id,
            "type": "function",
            "function": {"name": TOOL_NAME, "arguments": arguments},
        },
    )
    logs = [
        o.get("logs", "")
        for o in item.get("outputs") or []
        if isinstance(o, dict) and o.get("type") == "logs"
    ]
    result = "\n".join(logs) if logs else "[output not available]"
    messages.append({"role": "tool", "tool_call_id": call_id, "content": result})
