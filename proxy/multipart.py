"""A streaming multipart/form-data reader: file parts are never held in memory.

Starlette's form parser spools whole files before a route sees them and enforces no size
limit on them. This reader yields small fields as values and file parts as a stream of
chunks, so an upload goes straight into the blob store and stops at the size limit.
"""

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from python_multipart.multipart import MultipartParser, parse_options_header

from proxy.errors import InvalidRequestError

MAX_FIELD_BYTES = 64 * 1024


@dataclass
class Field:
    name: str
    value: str


@dataclass
class FileStart:
    name: str
    filename: str
    content_type: str


@dataclass
class FileData:
    data: bytes


@dataclass
class FileEnd:
    pass


Event = Field | FileStart | FileData | FileEnd


@dataclass
class _Part:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    name: str = ""
    filename: str | None = None
    value: bytearray = field(default_factory=bytearray)


def boundary_of(content_type: str | None) -> bytes:
    ctype, params = parse_options_header(content_type or "")
    if ctype != b"multipart/form-data" or not params.get(b"boundary"):
        raise InvalidRequestError(
            "Expected a multipart/form-data body with the fields 'file' and 'purpose'.",
            code="invalid_content_type",
        )
    return params[b"boundary"]


async def read_events(boundary: bytes, stream: AsyncIterator[bytes]) -> AsyncIterator[Event]:
    """Parse the body into events, one file part's data as a run of FileData events."""
    events: list[Event] = []
    part = _Part()
    header_field = bytearray()
    header_value = bytearray()
    ended = False

    def on_part_begin() -> None:
        nonlocal part
        part = _Part()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_field.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        part.headers[bytes(header_field).lower()] = bytes(header_value)
        header_field.clear()
        header_value.clear()

    def on_headers_finished() -> None:
        _, params = parse_options_header(part.headers.get(b"content-disposition", b""))
        part.name = params.get(b"name", b"").decode("utf-8", "replace")
        raw_filename = params.get(b"filename")
        if raw_filename is not None:
            part.filename = raw_filename.decode("utf-8", "replace")
            ctype = part.headers.get(b"content-type", b"application/octet-stream")
            events.append(FileStart(part.name, part.filename, ctype.decode("latin-1")))

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if part.filename is not None:
            events.append(FileData(bytes(data[start:end])))
            return
        part.value.extend(data[start:end])
        if len(part.value) > MAX_FIELD_BYTES:
            raise InvalidRequestError(f"Form field '{part.name}' is too long.", param=part.name)

    def on_part_end() -> None:
        if part.filename is not None:
            events.append(FileEnd())
        else:
            events.append(Field(part.name, part.value.decode("utf-8", "replace")))

    def on_end() -> None:
        nonlocal ended
        ended = True

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_end": on_end,
        },
    )
    async for chunk in stream:
        try:
            parser.write(chunk)
        except ValueError as exc:  # python-multipart's parse errors
            raise InvalidRequestError(f"Malformed multipart body: {exc}.") from None
        for event in _coalesce(events):
            yield event
        events.clear()
    parser.finalize()
    for event in _coalesce(events):
        yield event
    if not ended:
        raise InvalidRequestError("Malformed multipart body: it ends before its last boundary.")


def _coalesce(events: list[Event]) -> list[Event]:
    """Merge adjacent FileData events of one write into one chunk."""
    out: list[Event] = []
    for event in events:
        if isinstance(event, FileData) and out and isinstance(out[-1], FileData):
            out[-1] = FileData(out[-1].data + event.data)
        else:
            out.append(event)
    return out
