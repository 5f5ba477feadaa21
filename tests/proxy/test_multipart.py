"""The streaming multipart reader: fields as values, file parts as chunks, however the body is
cut into pieces, and clear 400s for bodies that are not what they claim."""

from collections.abc import AsyncIterator

import pytest

from proxy.errors import InvalidRequestError
from proxy.multipart import (
    MAX_FIELD_BYTES,
    Event,
    Field,
    FileData,
    FileEnd,
    FileStart,
    boundary_of,
    read_events,
)

BOUNDARY = b"----codeproxy-boundary-7MA4YWxk"


def body(*parts: tuple[str, str | None, bytes], content_type: str = "text/csv") -> bytes:
    out = b""
    for name, filename, value in parts:
        out += b"--" + BOUNDARY + b"\r\n"
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += f"Content-Disposition: {disposition}\r\n".encode()
        if filename is not None:
            out += f"Content-Type: {content_type}\r\n".encode()
        out += b"\r\n" + value + b"\r\n"
    return out + b"--" + BOUNDARY + b"--\r\n"


async def pieces(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def parse(data: bytes, size: int = 1 << 20) -> list[Event]:
    return [event async for event in read_events(BOUNDARY, pieces(data, size))]


def file_bytes(events: list[Event]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, FileData))


def test_the_boundary_comes_from_the_content_type() -> None:
    assert boundary_of(f"multipart/form-data; boundary={BOUNDARY.decode()}") == BOUNDARY
    for wrong in (None, "", "application/json", "multipart/form-data"):
        with pytest.raises(InvalidRequestError) as caught:
            boundary_of(wrong)
        assert caught.value.code == "invalid_content_type"


@pytest.mark.parametrize("size", [1, 7, 64, 1 << 20])
async def test_fields_and_a_file_however_the_body_is_cut(size: int) -> None:
    content = b"a,b\r\n1,2\r\n" * 100 + b"--not-the-boundary\r\n"
    events = await parse(
        body(("purpose", None, b"assistants"), ("file", "sales.csv", content)), size
    )
    assert events[0] == Field("purpose", "assistants")
    assert events[1] == FileStart("file", "sales.csv", "text/csv")
    assert isinstance(events[-1], FileEnd)
    assert all(isinstance(e, FileData) for e in events[2:-1])
    assert file_bytes(events) == content


async def test_one_write_yields_one_chunk_of_file_data() -> None:
    events = await parse(body(("file", "x.bin", b"\x00\x01" * 1000)))
    assert sum(isinstance(e, FileData) for e in events) == 1


async def test_an_empty_file_and_a_file_without_a_type() -> None:
    data = (
        b"--" + BOUNDARY + b"\r\n"
        b'Content-Disposition: form-data; name="file"; filename="empty"\r\n\r\n'
        b"\r\n--" + BOUNDARY + b"--\r\n"
    )
    events = await parse(data)
    assert events == [FileStart("file", "empty", "application/octet-stream"), FileEnd()]


async def test_names_are_decoded_as_utf8() -> None:
    events = await parse(body(("file", "Übersicht 2024 Köln.csv", b"x")))
    assert events[0] == FileStart("file", "Übersicht 2024 Köln.csv", "text/csv")


async def test_an_oversized_field_is_refused() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        await parse(body(("purpose", None, b"x" * (MAX_FIELD_BYTES + 1))))
    assert caught.value.param == "purpose"


async def test_a_body_cut_short_is_refused() -> None:
    data = body(("purpose", None, b"assistants"), ("file", "a.txt", b"abc"))
    with pytest.raises(InvalidRequestError, match="ends before its last boundary"):
        await parse(data[:-30])


async def test_garbage_is_refused() -> None:
    with pytest.raises(InvalidRequestError, match="Malformed multipart body"):
        await parse(b"this is not multipart at all\r\n" * 3)
