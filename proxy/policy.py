"""When the interpreter is on, for clients that cannot ask for it.

Off unless asked (default), always, or for model names matching patterns; and virtual model
names (a model id plus a suffix, e.g. `gpt-4o+code`) that clients pick from `/v1/models`. The
upstream always receives the real model id. A request's own `code_interpreter` tool wins;
`tool_choice: "none"` keeps the interpreter off.
"""

from fnmatch import fnmatchcase
from typing import Any, Literal

from proxy.errors import InvalidRequestError
from proxy.interpreter import Plan, plan_request
from proxy.settings import Settings

Transcript = Literal["markdown", "files", "none"]
TRANSCRIPT_HEADER = "codeproxy-transcript"
_MODES = ("markdown", "files", "none")


def real_model(model: str, settings: Settings) -> str | None:
    """The upstream model a virtual model name stands for, or None if it is not virtual."""
    suffix = settings.virtual_model_suffix
    if suffix and model.endswith(suffix) and len(model) > len(suffix):
        return model[: -len(suffix)]
    return None


def resolve(body: dict[str, Any], settings: Settings, header: str | None) -> Plan | None:
    """The interpreter plan for a chat request (None: pass it through). Rewrites a virtual
    model name in `body` to the real one."""
    virtual = real_model(body["model"], settings)
    if virtual is not None:
        body["model"] = virtual
    plan = plan_request(body)
    if plan is None:
        if body.get("tool_choice") == "none" or not (
            virtual is not None
            or settings.interpreter == "always"
            or (
                settings.interpreter == "models"
                and any(fnmatchcase(body["model"], p) for p in settings.interpreter_models)
            )
        ):
            return None
        tools = body.get("tools") or []
        if not isinstance(tools, list):
            raise InvalidRequestError("Invalid 'tools': expected an array.", param="tools")
        plan = Plan(client_tools=tools, by_policy=True)
    plan.transcript = _transcript(plan, settings, header)
    return plan


def _transcript(plan: Plan, settings: Settings, header: str | None) -> Transcript:
    """A request's transcript mode: the tool's own `transcript`, else the header, else the
    server default for chat apps and `none` for API clients that asked for the tool."""
    for value, param in ((plan.transcript, "tools.transcript"), (header, TRANSCRIPT_HEADER)):
        if value is None:
            continue
        if value not in _MODES:
            raise InvalidRequestError(
                f"Invalid transcript mode {value!r}: expected one of {', '.join(_MODES)}.",
                param=param,
            )
        return value  # type: ignore[return-value]
    return settings.transcript if plan.by_policy else "none"


def with_virtual_models(listing: Any, settings: Settings) -> Any:
    """The upstream's model list plus a virtual "with code" entry for each matching model."""
    suffix = settings.virtual_model_suffix
    if not suffix or not isinstance(listing, dict) or not isinstance(listing.get("data"), list):
        return listing
    extra = [
        {**model, "id": model["id"] + suffix}
        for model in listing["data"]
        if isinstance(model, dict)
        and isinstance(model.get("id"), str)
        and not model["id"].endswith(suffix)
        and any(fnmatchcase(model["id"], p) for p in settings.virtual_models)
    ]
    return {**listing, "data": [*listing["data"], *extra]}
