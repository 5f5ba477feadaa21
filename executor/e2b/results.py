"""E2B's results and errors in the executor's models, capped like every backend's output."""

import json
from typing import Any

from executor.models import ExecutionError, RichOutput, RunOutcome
from executor.output import CappedStream, clean_text

_MIME = {
    "text": "text/plain",
    "html": "text/html",
    "markdown": "text/markdown",
    "latex": "text/latex",
    "svg": "image/svg+xml",
    "png": "image/png",
    "jpeg": "image/jpeg",
    "pdf": "application/pdf",
    "javascript": "application/javascript",
}


class Results:
    """Rich results as mime bundles, dropped once their total size passes a limit."""

    def __init__(self, limit: int) -> None:
        self.items: list[RichOutput] = []
        self.dropped = 0
        self._room = limit

    def add(self, result: Any) -> None:
        """on_result of `run_code`."""
        data: dict[str, str] = {}
        for attr, mime in _MIME.items():
            value = getattr(result, attr, None)
            if isinstance(value, str) and value:
                data[mime] = clean_text(value)
        if getattr(result, "json", None) is not None:
            data["application/json"] = json.dumps(result.json)
        for mime, value in (getattr(result, "extra", None) or {}).items():
            data[clean_text(str(mime))] = (
                clean_text(value) if isinstance(value, str) else json.dumps(value)
            )
        size = sum(len(v) for v in data.values())
        if not data:
            return
        if size > self._room:
            self.dropped += 1
            return
        self._room -= size
        kind = "execute_result" if getattr(result, "is_main_result", False) else "display_data"
        self.items.append(RichOutput(kind=kind, data=data))


def execution_error(error: Any) -> ExecutionError:
    """E2B's ExecutionError; its traceback, which E2B joins into one string, as lines."""
    traceback = error.traceback if isinstance(error.traceback, str) else ""
    return ExecutionError(
        name=clean_text(str(error.name)),
        value=clean_text(str(error.value)),
        traceback=clean_text(traceback).splitlines(),
    )


def outcome(stdout: CappedStream, stderr: CappedStream, **fields: Any) -> RunOutcome:
    """A RunOutcome with the capped streams' text."""
    return RunOutcome(
        stdout=stdout.text(),
        stderr=stderr.text(),
        stdout_truncated=stdout.truncated,
        stderr_truncated=stderr.truncated,
        **fields,
    )
