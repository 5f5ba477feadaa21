"""The SSE encoder, the reader of the upstream's SSE, the guard that turns late errors into one
in-band error frame, and the heartbeats while a task runs."""

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from proxy.errors import InvalidRequestError, UpstreamError
from proxy.jsonutil import loads
from proxy.streaming import DONE, KEEPALIVE, frame, guarded, read_events


async def lines(*items: bytes) -> AsyncIterator[bytes]:
    for item in items:
        yield item


async def events_of(*items: bytes) -> list[dict[str, Any]]:
    return [event async for event in read_events(lines(*items))]


def test_a_frame_is_one_data_line_and_a_blank_line() -> None:
    assert frame({"a": 1, "b": "é"}) == 'data: {"a":1,"b":"é"}\n\n'.encode()
    assert DONE == b"data: [DONE]\n\n"
    assert KEEPALIVE.startswith(b":") and KEEPALIVE.endswith(b"\n\n")


async def test_events_are_read_until_done() -> None:
    events = await events_of(
        b'data: {"n": 1}\n',
        b"\n",
        b'data:{"n": 2}\r\n',
        b"\r\n",
        b"data: [DONE]\n",
        b"\n",
        b'data: {"n": "after done"}\n',
        b"\n",
    )
    assert events == [{"n": 1}, {"n": 2}]


async def test_comments_fields_and_extra_blank_lines_are_skipped() -> None:
    events = await events_of(
        b": keepalive\n",
        b"\n",
        b"\n",
        b"event: message\n",
        b"id: 7\n",
        b'data: {"n": 1}\n',
        b"\n",
    )
    assert events == [{"n": 1}]


async def test_a_multi_line_data_field_is_joined() -> None:
    events = await events_of(b'data: {"n":\n', b"data: 1}\n", b"\n")
    assert events == [{"n": 1}]


async def test_a_stream_that_ends_without_done_ends_the_events() -> None:
    assert await events_of(b'data: {"n": 1}\n', b"\n") == [{"n": 1}]


async def test_an_in_band_error_event_is_raised() -> None:
    error = {"error": {"message": "overloaded", "type": "server_error", "param": None}}
    with pytest.raises(UpstreamError) as caught:
        await events_of(b'data: {"n": 1}\n', b"\n", frame(error)[:-1], b"\n")
    assert caught.value.message == "overloaded"
    assert caught.value.body() == error


async def test_guarded_sends_first_and_rest() -> None:
    sent = [chunk async for chunk in guarded(b"first", lines(b"second", b"third"))]
    assert sent == [b"first", b"second", b"third"]


async def test_an_error_after_the_first_byte_becomes_one_error_frame() -> None:
    async def failing() -> AsyncIterator[bytes]:
        yield b"second"
        raise InvalidRequestError("The model asked for something impossible.", param="x")

    sent = [chunk async for chunk in guarded(b"first", failing())]
    assert sent[:2] == [b"first", b"second"]
    assert len(sent) == 3
    assert sent[2].startswith(b"data: ") and sent[2].endswith(b"\n\n")
    assert loads(sent[2][6:]) == {
        "error": {
            "message": "The model asked for something impossible.",
            "type": "invalid_request_error",
            "param": "x",
            "code": None,
        }
    }


async def test_an_unexpected_error_is_reported_without_its_details(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def failing() -> AsyncIterator[bytes]:
        raise RuntimeError("secret internals")
        yield b""  # pragma: no cover

    sent = [chunk async for chunk in guarded(b"first", failing())]
    error = loads(sent[1][6:])["error"]
    assert error["type"] == "server_error" and "secret" not in error["message"]
    assert "secret internals" in caplog.text  # logged for the operator


async def test_cancellation_passes_through_the_guard() -> None:
    async def cancelled() -> AsyncIterator[bytes]:
        raise asyncio.CancelledError
        yield b""  # pragma: no cover

    with pytest.raises(asyncio.CancelledError):
        async for _ in guarded(b"first", cancelled()):
            pass
