"""A fake of E2B's code-interpreter server, for the E2B backend's tests with the real SDK.

It speaks what the template's server speaks: `POST /execute` answers a stream of
newline-delimited JSON (`number_of_executions`, `stdout`, `stderr`, `result`, `error`,
`keepalive`, `end_of_execution`), `GET /contexts`, `POST /contexts/{id}/restart`; and of
envd's API `GET /health` and an empty directory listing. It is an HTTP proxy as well: the SDK
in debug mode addresses `localhost:49999`, and each sandbox is pointed at its own fake through
the SDK's `proxy` option, so every fake listens on a free port of its own.

It keeps the real server's behaviour that matters here:

- one lock per context; a client that disconnects releases it at once, and the kernel is
  interrupted only `interrupt_delay` later (the server's REST call to Jupyter);
- an interrupted cell ends with KeyboardInterrupt, and the kernel aborts whatever was queued
  behind it; the server never answers an aborted cell (it waits for an `execute_input` that
  never comes), so its stream carries keepalives until the client gives up;
- a language without a kernel is an HTTP 500 for that request only;
- `die()` kills the server mid-stream: connections reset, new ones refused.

The kernel runs a tiny language, one statement per line (anything else does nothing):
`x = 1`, `print(x)`, `print('text')`, `result(42)`, `1/0`, `sleep(5)` (interruptible),
`stubborn(5)` (ignores interrupts), `flood(n)` (n lines of 1000 characters), `die()`.
"""

import asyncio
import contextlib
import json
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

KEEPALIVE = 1.0
STAMP = "2026-01-01T00:00:00+00:00"

Line = dict[str, Any]


@dataclass(eq=False)
class Cell:
    code: str
    lines: "asyncio.Queue[Line | None]" = field(default_factory=asyncio.Queue)
    stubborn: bool = False
    running: "asyncio.Task[None] | None" = None

    def emit(self, line: Line | None) -> None:
        self.lines.put_nowait(line)


class FakeKernel:
    """Runs cells one at a time, like a Jupyter kernel behind one context."""

    def __init__(self, server: "FakeCodeInterpreter") -> None:
        self.server = server
        self.variables: dict[str, str] = {}
        self.executions = 0
        self.busy = asyncio.Event()
        self._queue: deque[Cell] = deque()
        self._wake = asyncio.Event()
        self._current: Cell | None = None
        self._worker = asyncio.create_task(self._work())

    def submit(self, cell: Cell) -> None:
        self._queue.append(cell)
        self._wake.set()

    def interrupt(self) -> None:
        cell = self._current
        if cell is None or cell.stubborn or cell.running is None:
            return
        cell.running.cancel()

    def restart(self) -> None:
        """A fresh kernel: state gone; every cell it had ends with ContextRestarting."""
        self.variables.clear()
        cells = list(self._queue)
        self._queue.clear()
        if self._current is not None and self._current.running is not None:
            self._current.running.cancel()
            cells.insert(0, self._current)
            self._current = None
        for cell in cells:
            cell.emit({"type": "error", "name": "ContextRestarting", "value": "", "traceback": ""})
            cell.emit(None)

    def close(self) -> None:
        self._worker.cancel()
        if self._current is not None and self._current.running is not None:
            self._current.running.cancel()

    async def _work(self) -> None:
        while True:
            while not self._queue:
                self._wake.clear()
                await self._wake.wait()
            cell = self._queue.popleft()
            self._current = cell
            cell.running = asyncio.create_task(self._run(cell))
            await asyncio.wait({cell.running})
            if self._current is cell:
                self._current = None
            self.busy.clear()

    async def _run(self, cell: Cell) -> None:
        self.executions += 1
        cell.emit({"type": "number_of_executions", "execution_count": self.executions})
        self.busy.set()
        try:
            for statement in cell.code.splitlines():
                if not await self._statement(cell, statement.strip()):
                    self._abort_queue()
                    break
        except asyncio.CancelledError:
            if cell not in self._queue and self._current is cell:
                cell.emit(_error("KeyboardInterrupt", "", ["KeyboardInterrupt: "]))
                cell.emit(None)
                self._abort_queue()
            return
        cell.emit(None)

    def _abort_queue(self) -> None:
        """ipykernel aborts the queued cells when one fails; E2B's server never ends them."""
        self._queue.clear()

    async def _statement(self, cell: Cell, statement: str) -> bool:
        """Run one statement; False when it raised (the cell stops there)."""
        if m := re.fullmatch(r"(\w+) = (.+)", statement):
            self.variables[m[1]] = m[2]
        elif m := re.fullmatch(r"print\('(.*)'\)", statement):
            cell.emit({"type": "stdout", "text": m[1] + "\n", "timestamp": STAMP})
        elif m := re.fullmatch(r"print\((\w+)\)", statement):
            if m[1] not in self.variables:
                tb = ["Cell In[1], line 1\n", f"----> 1 print({m[1]})\n", "NameError: ..."]
                cell.emit(_error("NameError", f"name '{m[1]}' is not defined", tb))
                return False
            cell.emit({"type": "stdout", "text": self.variables[m[1]] + "\n", "timestamp": STAMP})
        elif m := re.fullmatch(r"result\((.*)\)", statement):
            cell.emit({"type": "result", "text": m[1], "is_main_result": True, "extra": {}})
        elif statement == "1/0":
            tb = [
                "ZeroDivisionError                         Traceback (most recent call last)\n",
                "Cell In[1], line 1\n----> 1 1/0\n",
                "ZeroDivisionError: division by zero",
            ]
            cell.emit(_error("ZeroDivisionError", "division by zero", tb))
            return False
        elif m := re.fullmatch(r"sleep\(([\d.]+)\)", statement):
            await asyncio.sleep(float(m[1]))
        elif m := re.fullmatch(r"stubborn\(([\d.]+)\)", statement):
            cell.stubborn = True
            try:
                await asyncio.sleep(float(m[1]))
            finally:
                cell.stubborn = False
        elif m := re.fullmatch(r"flood\((\d+)\)", statement):
            for _ in range(int(m[1])):
                cell.emit({"type": "stdout", "text": "x" * 999 + "\n", "timestamp": STAMP})
                await asyncio.sleep(0)
        elif statement == "die()":
            cell.emit({"type": "stdout", "text": "dying\n", "timestamp": STAMP})
            await asyncio.sleep(0.05)
            self.server.die()
            await asyncio.sleep(3600)
        return True


def _error(name: str, value: str, traceback: list[str]) -> Line:
    # E2B's server joins the traceback entries into one string.
    return {"type": "error", "name": name, "value": value, "traceback": "".join(traceback)}


class FakeCodeInterpreter:
    """One sandbox's code-interpreter server (see the module docstring)."""

    def __init__(self, *, languages: tuple[str, ...], interrupt_delay: float) -> None:
        self.languages = languages
        self.interrupt_delay = interrupt_delay
        self.kernels: dict[str, FakeKernel] = {}
        self.locks: dict[str, asyncio.Lock] = {}
        self.interrupts = 0
        self.restarts = 0
        self.dead = False
        self.url = ""
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._interrupts: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        for language in self.languages:
            self.kernels[language] = FakeKernel(self)
            self.locks[language] = asyncio.Lock()
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    @property
    def python(self) -> FakeKernel:
        return self.kernels["python"]

    def die(self) -> None:
        """The VM is gone: connections reset, nothing listens any more."""
        self.dead = True
        if self._server is not None:
            self._server.close()
        for writer in list(self._connections):
            writer.transport.abort()

    async def aclose(self) -> None:
        self.die()
        for kernel in self.kernels.values():
            kernel.close()
        for task in list(self._interrupts):
            task.cancel()
        # Connections end by themselves once reset.
        await asyncio.gather(*self._interrupts, *self._tasks, return_exceptions=True)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(writer)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while not self.dead:
                request = await _read_request(reader)
                if request is None:
                    break
                method, path, body = request
                await self._respond(method, path, body, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            self._connections.discard(writer)
            self._tasks.discard(task)
            writer.close()

    async def _respond(
        self,
        method: str,
        path: str,
        body: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        if method == "GET" and path == "/health":
            await _send(writer, 204, b"")
        elif method == "POST" and path == "/filesystem.Filesystem/ListDir":
            # envd's Connect RPC (JSON codec): an empty ListDirResponse.
            await _send(writer, 200, b"{}", "application/json")
        elif method == "GET" and path == "/contexts":
            contexts = [
                {"id": f"ctx-{lang}", "language": lang, "cwd": "/home/user"}
                for lang in self.languages
            ]
            await _send(writer, 200, json.dumps(contexts).encode(), "application/json")
        elif method == "POST" and (m := re.fullmatch(r"/contexts/ctx-(\w+)/restart", path)):
            self.restarts += 1
            self.kernels[m[1]].restart()
            await _send(writer, 200, b"null", "application/json")
        elif method == "POST" and path == "/execute":
            await self._execute(json.loads(body), reader, writer)
        else:
            await _send(writer, 404, b"Not Found")

    async def _execute(
        self, request: dict[str, Any], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        language = request.get("language") or "python"
        if language not in self.kernels:
            await _send(writer, 500, f"No kernel for language {language}".encode())
            return
        kernel = self.kernels[language]
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        gone = asyncio.ensure_future(reader.read(1))
        async with self.locks[language]:
            cell = Cell(request["code"])
            kernel.submit(cell)
            try:
                while True:
                    next_line = asyncio.ensure_future(cell.lines.get())
                    done, _ = await asyncio.wait(
                        {next_line, gone}, timeout=KEEPALIVE, return_when=asyncio.FIRST_COMPLETED
                    )
                    if gone in done:
                        next_line.cancel()
                        break
                    if next_line not in done:
                        next_line.cancel()
                        await _chunk(writer, {"type": "keepalive"})
                        continue
                    line = next_line.result()
                    if line is None:
                        await _chunk(writer, {"type": "end_of_execution"})
                        writer.write(b"0\r\n\r\n")
                        await writer.drain()
                        gone.cancel()
                        await asyncio.wait({gone})
                        return
                    await _chunk(writer, line)
            except ConnectionError:
                pass
        # The client went away. The lock is free already; the interrupt comes later.
        gone.cancel()
        await asyncio.wait({gone})
        self._later(self.interrupt_delay, kernel)
        raise ConnectionResetError

    def _later(self, delay: float, kernel: FakeKernel) -> None:
        async def interrupt() -> None:
            await asyncio.sleep(delay)
            self.interrupts += 1
            kernel.interrupt()

        task = asyncio.create_task(interrupt())
        self._interrupts.add(task)
        task.add_done_callback(self._interrupts.discard)


class FakeE2B:
    """Starts one fake server per sandbox, and hands the SDK its address."""

    def __init__(
        self, *, languages: tuple[str, ...] = ("python", "javascript"), interrupt_delay: float = 0.1
    ) -> None:
        self.languages = languages
        self.interrupt_delay = interrupt_delay
        self.servers: list[FakeCodeInterpreter] = []

    async def new_server(self) -> FakeCodeInterpreter:
        server = FakeCodeInterpreter(languages=self.languages, interrupt_delay=self.interrupt_delay)
        await server.start()
        self.servers.append(server)
        return server

    async def aclose(self) -> None:
        for server in self.servers:
            with contextlib.suppress(Exception):
                await server.aclose()


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, bytes] | None:
    line = await reader.readline()
    if not line:
        return None
    method, target, _ = line.decode().split(" ", 2)
    headers: dict[str, str] = {}
    while (header := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = header.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    body = b""
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        while size := int((await reader.readline()).strip(), 16):
            body += await reader.readexactly(size)
            await reader.readline()
        await reader.readline()
    # A proxy gets the absolute form: POST http://localhost:49999/execute HTTP/1.1
    return method, urlsplit(target).path or target, body


async def _send(
    writer: asyncio.StreamWriter, status: int, body: bytes, media: str = "text/plain"
) -> None:
    reason = {200: "OK", 204: "No Content", 404: "Not Found", 500: "Internal Server Error"}
    head = f"HTTP/1.1 {status} {reason[status]}\r\ncontent-type: {media}\r\n"
    head += f"content-length: {len(body)}\r\n\r\n"
    writer.write(head.encode() + body)
    await writer.drain()


async def _chunk(writer: asyncio.StreamWriter, line: Line) -> None:
    data = (json.dumps(line) + "\n").encode()
    writer.write(b"%x\r\n%s\r\n" % (len(data), data))
    await writer.drain()
