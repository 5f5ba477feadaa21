"""Renderers: each folds the engine's events (`proxy/events.py`) into one surface's wire format.

A renderer is synchronous and does no I/O: it never calls the upstream, the executor or the
database, so the same events always render the same way. Two shapes:

- a stream renderer's `feed(event)` returns the frames to send now (possibly none);
- an object renderer's `feed(event)` only folds, and `result()` builds the final object once
  `Done` has been fed.

`Failed` is not fed: the surface's driver raises its error, which is shown with its status
before the first byte and in-band after it (`proxy.streaming.guarded`).
"""

from typing import Any, Protocol

from proxy.events import Event


class StreamRenderer(Protocol):
    def feed(self, event: Event) -> list[bytes]: ...


class ObjectRenderer(Protocol):
    def feed(self, event: Event) -> None: ...

    def result(self) -> dict[str, Any]: ...
