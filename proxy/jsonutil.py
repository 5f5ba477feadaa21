"""Fast JSON (orjson) for request bodies and responses."""

from typing import Any

import orjson
from starlette.responses import Response

loads = orjson.loads


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)


class JSONResponse(Response):
    """A JSON response serialised with orjson."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)
