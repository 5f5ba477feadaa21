"""Bounded buffers for what sandboxes print, shared by every backend: a head-keeping capped
stream and a ring buffer."""

from collections import deque

# Past this many times the cap, output is a flood: interrupt (kernel) or kill (one-shot).
FLOOD_FACTOR = 8


class CappedStream:
    """Keeps the first `limit` bytes of a stream and counts the rest."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._parts: list[bytes] = []
        self.kept = 0
        self.dropped = 0

    @property
    def truncated(self) -> bool:
        """Something was dropped."""
        return self.dropped > 0

    @property
    def total(self) -> int:
        """Bytes received, kept or not."""
        return self.kept + self.dropped

    @property
    def flooding(self) -> bool:
        """Far past the cap: time to stop the code."""
        # >=: the kernel's soft cap forwards exactly FLOOD_FACTOR * limit characters.
        return self.total >= FLOOD_FACTOR * self.limit

    def add(self, data: bytes) -> None:
        """Keep what fits, count the rest."""
        room = self.limit - self.kept
        if room >= len(data):
            self._parts.append(data)
            self.kept += len(data)
            return
        cut = max(room, 0)
        # Cut at a character boundary so the kept head stays valid UTF-8.
        while 0 < cut < len(data) and data[cut] & 0xC0 == 0x80:
            cut -= 1
        if cut:
            self._parts.append(data[:cut])
        # The budget is spent even if the cut backed off a few bytes.
        self.kept = max(self.kept, self.limit)
        self.dropped += len(data) - cut

    def add_text(self, text: str) -> None:
        """add() for text from the kernel."""
        if self.kept >= self.limit:
            # Counting is enough; a 27 MB stream message need not be encoded just to drop it.
            self.dropped += len(text)
            return
        self.add(text.encode("utf-8", "replace"))

    def clear(self) -> None:
        """Start over (clear_output): only what comes after is shown and counted."""
        self._parts.clear()
        self.kept = self.dropped = 0

    def text(self) -> str:
        """The kept head, decoded."""
        return b"".join(self._parts).decode("utf-8", "replace")


class RingBuffer:
    """The last `size` bytes written to it (for the kernel process's own stdout/stderr)."""

    def __init__(self, size: int = 64 * 1024) -> None:
        self.size = size
        self._chunks: deque[bytes] = deque()
        self._length = 0

    def write(self, data: bytes) -> None:
        """Append, forgetting the oldest bytes beyond the size."""
        self._chunks.append(data)
        self._length += len(data)
        while self._length - len(self._chunks[0]) >= self.size:
            self._length -= len(self._chunks.popleft())

    def tail(self, limit: int = 4096) -> str:
        """The last `limit` bytes, for error messages."""
        return b"".join(self._chunks)[-limit:].decode("utf-8", "replace")


def clean_text(text: str) -> str:
    """`text` without lone surrogates (no JSON encoder takes them): each becomes U+FFFD."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return text


def clean_name(name: str) -> str:
    """A file name as the OS gave it (undecodable bytes as surrogates), made safe to show."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
