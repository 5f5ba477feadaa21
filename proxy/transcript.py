"""What a chat app shows: runs as markdown, files as working links, `sandbox:` links fixed.

Modes: `markdown` (each run's code in a fenced block, then its output, images inline and
file links), `files` (only images and links), `none` (nothing added).
"""

import posixpath
import re
from collections.abc import Awaitable, Callable
from urllib.parse import unquote

from proxy.coderunner import Run, SavedFile
from proxy.interpreter import clip

OUTPUT_CHARS = 4000
SANDBOX = "sandbox:"
PREFIX = "sandbox:/mnt/data/"
# Characters that end a link written in markdown or prose.
_END = re.compile(r"[\s)\]\"'<>`]")
_IMAGE = re.compile(r"\.(png|jpe?g|gif|webp)$", re.IGNORECASE)

Resolve = Callable[[str], Awaitable[str | None]]


def fence(text: str, info: str = "") -> str:
    """A fenced code block that the text inside cannot close."""
    ticks = "```"
    while ticks in text:
        ticks += "`"
    return f"{ticks}{info}\n{text.rstrip()}\n{ticks}"


class Transcript:
    def __init__(self, mode: str, url: Callable[[SavedFile], str]) -> None:
        self.mode = mode
        self._url = url

    def code(self, code: str, language: str) -> str:
        if self.mode != "markdown":
            return ""
        return fence(code, language)

    def result(self, run: Run) -> str:
        if self.mode == "none":
            return ""
        parts: list[str] = []
        if self.mode == "markdown":
            output = run.logs()
            if output:
                parts.append(fence(clip(output, OUTPUT_CHARS), "text"))
        for image in run.images:
            parts.append(f"![{image.filename}]({self._url(image)})")
        for saved in run.files:
            link = f"[{saved.filename}]({self._url(saved)})"
            parts.append(f"!{link}" if _IMAGE.search(saved.filename) else link)
        return "\n\n".join(parts)


class LinkRewriter:
    """Rewrites `sandbox:/mnt/data/<name>` links in text that may arrive in pieces.

    `feed` returns the text that is safe to emit and holds back a possible link start at the
    end (a link split across stream chunks); `flush` emits the rest at the end of the text.
    """

    def __init__(self, resolve: Resolve) -> None:
        self._resolve = resolve
        self._pending = ""

    async def feed(self, text: str) -> str:
        buf = self._pending + text
        self._pending = ""
        out: list[str] = []
        i = 0
        while True:
            j = buf.find(SANDBOX, i)
            if j < 0:
                keep = _partial_suffix(buf, i)
                out.append(buf[i : len(buf) - keep])
                self._pending = buf[len(buf) - keep :]
                break
            out.append(buf[i:j])
            rest = buf[j:]
            if not rest.startswith(PREFIX):
                if PREFIX.startswith(rest):  # "sandbox:/mnt/da" at the very end
                    self._pending = rest
                    break
                out.append(SANDBOX)
                i = j + len(SANDBOX)
                continue
            end = _END.search(rest, len(PREFIX))
            if end is None:
                self._pending = rest
                break
            out.append(await self._link(rest[: end.start()]))
            i = j + end.start()
        return "".join(out)

    async def flush(self) -> str:
        rest, self._pending = self._pending, ""
        if rest.startswith(PREFIX) and len(rest) > len(PREFIX):
            return await self._link(rest)
        return rest

    async def rewrite(self, text: str) -> str:
        return await self.feed(text) + await self.flush()

    async def _link(self, link: str) -> str:
        path = posixpath.normpath("/mnt/data/" + unquote(link[len(PREFIX) :]))
        if not path.startswith("/mnt/data/"):
            return link
        url = await self._resolve(path)
        return url if url is not None else link


def _partial_suffix(buf: str, start: int) -> int:
    """Length of the longest end of `buf[start:]` that could begin `sandbox:`."""
    for n in range(min(len(SANDBOX) - 1, len(buf) - start), 0, -1):
        if SANDBOX.startswith(buf[len(buf) - n :]):
            return n
    return 0
