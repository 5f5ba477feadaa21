"""Logging for both services: text or JSON lines, each record carrying the request id, tenant
and session id of the request it was logged for.

The ids live in context variables, set where they become known (the request-id middleware,
authentication, the session lookup); asyncio copies them into the tasks a request starts. Only
ids are added: user code, file contents and keys are never put in a record.
"""

import json
import logging
import time
from contextvars import ContextVar

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
tenant: ContextVar[str | None] = ContextVar("tenant", default=None)
session_id: ContextVar[str | None] = ContextVar("session_id", default=None)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s%(context)s"


class ContextFilter(logging.Filter):
    """Adds `request_id`, `tenant`, `session_id` and a text rendering of them (`context`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        ids = {
            "request_id": request_id.get(),
            "tenant": tenant.get(),
            "session_id": session_id.get(),
        }
        for key, value in ids.items():
            setattr(record, key, value)
        shown = " ".join(f"{k}={v}" for k, v in ids.items() if v)
        record.context = f" [{shown}]" if shown else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the ids, and the traceback."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("request_id", "tenant", "session_id"):
            value = getattr(record, key, None)
            if value:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(level: str, fmt: str) -> None:
    """Configure the root logger once, in the entrypoint (`fmt` is "text" or "json")."""
    handler = logging.StreamHandler()
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
