"""Talking to the sandbox's ipykernel over IPC sockets: readiness, one cell, interrupts.

The client waits on shell, iopub and control at once (a reply and its outputs arrive on
different sockets), keeps only messages whose parent is our request, and drains iopub
continuously so a flooding cell cannot grow this process. There is no heartbeat channel:
the caller's `alive()` (the bwrap process's `poll()`) is the liveness signal.
"""

import asyncio
import hashlib
import hmac
import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import zmq
import zmq.asyncio
from jupyter_client.session import Session

from executor.local.bwrap import KERNEL_RUN_DIR
from executor.local.output import FLOOD_FACTOR, CappedStream
from executor.models import ExecutionError, RichOutput

log = logging.getLogger(__name__)

PORTS = {"shell": 1, "iopub": 2, "stdin": 3, "control": 4, "hb": 5}
KERNEL_INFO_RESEND = 0.25
POLL_INTERVAL = 0.1
# An interrupt that lands between a cell's error and its execute_reply makes ipykernel drop
# the reply ("KeyboardInterrupt caught in kernel"); status idle still comes, so a cell whose
# idle has been seen this long ago is over even without a reply.
REPLY_WAIT = 0.2
# After the flood cap arrived, how long the cell may take to stop on its own (the kernel's
# soft cap stops it) before the host interrupts.
FLOOD_SETTLE = 0.3

Ending = Literal["done", "kill", "died"]


class KernelNotReady(Exception):
    """The kernel did not answer kernel_info in time, or its process exited first."""


@dataclass(frozen=True)
class ConnectionInfo:
    """One kernel's connection file; the host and the sandbox see the socket dir differently."""

    run_dir: Path
    key: str = field(default_factory=lambda: secrets.token_hex(32))

    def sandbox_file(self) -> bytes:
        """The connection file as the kernel reads it, inside the sandbox."""
        return json.dumps(
            {
                **{f"{name}_port": port for name, port in PORTS.items()},
                "ip": f"{KERNEL_RUN_DIR}/k",
                "key": self.key,
                "transport": "ipc",
                "signature_scheme": "hmac-sha256",
                "kernel_name": "",
            }
        ).encode()

    def address(self, channel: str) -> str:
        """The host-side zmq address of a channel."""
        return f"ipc://{self.run_dir}/k-{PORTS[channel]}"


@dataclass
class Cell:
    """Everything one execute_request produced so far."""

    msg_id: str
    stdout: CappedStream
    stderr: CappedStream
    results: list[RichOutput] = field(default_factory=list)
    results_bytes: int = 0
    results_dropped: int = 0
    error: ExecutionError | None = None
    reply: dict[str, Any] | None = None
    idle: bool = False
    idle_at: float | None = None
    clear_pending: bool = False
    timed_out: bool = False
    flooded: bool = False
    flood_at: float | None = None
    # When set, the kernel was interrupted and gets killed if the cell is not over by then.
    kill_at: float | None = None

    @property
    def done(self) -> bool:
        """Both the execute_reply and the idle status have arrived."""
        return self.reply is not None and self.idle

    @property
    def results_limit(self) -> int:
        """Bytes of rich outputs kept per cell."""
        # Images are what rich outputs are for, so they get the flood budget, not the text cap.
        return FLOOD_FACTOR * self.stdout.limit

    def clear(self) -> None:
        """clear_output: forget what the cell showed so far."""
        self.stdout.clear()
        self.stderr.clear()
        self.results.clear()
        self.results_bytes = 0
        self.clear_pending = False


DELIMITER = b"<IDS|MSG>"


@dataclass(frozen=True)
class Message:
    """A received message, its content left undecoded until someone needs it."""

    sock: zmq.asyncio.Socket
    msg_type: str
    parent_id: str | None
    raw_content: bytes

    def content(self) -> dict[str, Any]:
        """The decoded content."""
        value: dict[str, Any] = json.loads(self.raw_content)
        return value


def _mime_data(data: dict[str, Any]) -> dict[str, str]:
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in data.items()}


class KernelClient:
    """The shell, iopub and control channels of one kernel."""

    def __init__(self, context: zmq.asyncio.Context, info: ConnectionInfo) -> None:
        self.info = info
        self.session = Session(
            key=info.key.encode(), signature_scheme="hmac-sha256", username="codeproxy"
        )
        self.shell = context.socket(zmq.DEALER)
        self.iopub = context.socket(zmq.SUB)
        self.control = context.socket(zmq.DEALER)
        self.iopub.setsockopt(zmq.SUBSCRIBE, b"")
        for name, sock in (("shell", self.shell), ("iopub", self.iopub), ("control", self.control)):
            sock.setsockopt(zmq.LINGER, 0)
            # The kernel binds ~0.5 s after we connect; retry the ipc path often.
            sock.setsockopt(zmq.RECONNECT_IVL, 10)
            sock.connect(info.address(name))
        # One outstanding recv per socket, kept across calls: cheaper than a Poller (which
        # re-registers every socket with the event loop on each poll) and loses nothing when
        # a caller is cancelled mid-wait.
        self._pending: dict[zmq.asyncio.Socket, asyncio.Future[list[bytes]]] = {}

    def close(self) -> None:
        """Close the sockets (pending receives are cancelled)."""
        for future in self._pending.values():
            future.cancel()
        self._pending.clear()
        for sock in (self.shell, self.iopub, self.control):
            sock.close(linger=0)

    async def _send(
        self,
        sock: zmq.asyncio.Socket,
        msg_type: str,
        content: dict[str, Any],
        metadata: dict[str, Any] | None = None,
    ) -> str:
        msg = self.session.msg(msg_type, content, metadata=metadata)
        await sock.send_multipart(self.session.serialize(msg))
        return str(msg["header"]["msg_id"])

    async def _receive(self, timeout: float) -> list[Message]:
        """Messages that arrive on any channel within `timeout` (maybe none)."""
        for sock in (self.shell, self.iopub, self.control):
            if sock not in self._pending:
                self._pending[sock] = asyncio.ensure_future(sock.recv_multipart())
        done, _ = await asyncio.wait(
            self._pending.values(), timeout=max(0.0, timeout), return_when=asyncio.FIRST_COMPLETED
        )
        received = []
        for sock, future in list(self._pending.items()):
            if future in done:
                del self._pending[sock]
                msg = self._decode(sock, future.result())
                if msg is not None:
                    received.append(msg)
        return received

    def _decode(self, sock: zmq.asyncio.Socket, frames: list[bytes]) -> Message | None:
        """Check the HMAC and read the header and parent only.

        Session.deserialize would also parse every date and the whole content (a flood's
        stream messages can be 27 MB): about 0.2 ms per message that a cell never needs.
        """
        try:
            start = frames.index(DELIMITER) + 1
            signature, header, parent, metadata, content = frames[start : start + 5]
        except ValueError:
            log.warning("dropping a malformed kernel message")
            return None
        mac = hmac.new(self.info.key.encode(), digestmod=hashlib.sha256)
        for part in (header, parent, metadata, content):
            mac.update(part)
        if not hmac.compare_digest(mac.hexdigest().encode(), signature):
            log.warning("dropping a kernel message with a bad signature")
            return None
        parent_id = json.loads(parent).get("msg_id")
        return Message(sock, json.loads(header)["msg_type"], parent_id, content)

    async def wait_ready(self, alive: Callable[[], bool], timeout: float) -> None:
        """Resend kernel_info until it is answered and iopub delivers (subscription is live)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        sent: set[str] = set()
        replied = heard = False
        next_send = loop.time()
        while not (replied and heard):
            now = loop.time()
            if now >= end:
                raise KernelNotReady(f"no kernel_info_reply within {timeout:.1f} s")
            if not alive():
                raise KernelNotReady("the kernel process exited during start-up")
            if now >= next_send:
                sent.add(await self._send(self.shell, "kernel_info_request", {}))
                next_send = now + KERNEL_INFO_RESEND
            for msg in await self._receive(min(next_send, end) - now):
                if msg.sock is self.iopub:
                    heard = True
                elif msg.sock is self.shell and msg.parent_id in sent:
                    replied = True

    async def execute(self, code: str, max_output_bytes: int) -> Cell:
        """Send an execute_request; collect() then gathers what it produces."""
        msg_id = await self._send(
            self.shell,
            "execute_request",
            {
                "code": code,
                "silent": False,
                "store_history": True,
                "user_expressions": {},
                "allow_stdin": False,
                "stop_on_error": True,
            },
            # Read by kernel_startup.py's soft output cap.
            {"codeproxy": {"max_output_bytes": max_output_bytes}},
        )
        return Cell(msg_id, CappedStream(max_output_bytes), CappedStream(max_output_bytes))

    async def interrupt(self) -> None:
        """interrupt_request on the control channel (interrupt_mode "message").

        Never signal the bwrap process: it does not forward signals and would just die.
        """
        await self._send(self.control, "interrupt_request", {})

    async def collect(
        self, cell: Cell, *, deadline: float, grace: float, alive: Callable[[], bool]
    ) -> Ending:
        """Gather the cell's output until it is over, interrupting it past the deadline.

        Returns "done", "kill" (interrupted but still running after `grace`: the caller must
        kill the sandbox) or "died" (the kernel process exited).
        """
        loop = asyncio.get_running_loop()
        while not cell.done:
            now = loop.time()
            if cell.idle and cell.idle_at is None:
                cell.idle_at = now
            if cell.idle_at is not None and now - cell.idle_at >= REPLY_WAIT:
                log.debug("cell %s: idle without execute_reply", cell.msg_id)
                break
            if cell.kill_at is not None:
                if now >= cell.kill_at:
                    return "kill"
            elif not cell.idle:
                if cell.flood_at is None and (cell.stdout.flooding or cell.stderr.flooding):
                    cell.flooded = True
                    cell.flood_at = now
                if now >= deadline:
                    cell.timed_out = True
                if cell.timed_out or (
                    cell.flood_at is not None and now >= cell.flood_at + FLOOD_SETTLE
                ):
                    # Once the error is out the cell is already ending; an interrupt now
                    # would only race with its reply.
                    if cell.error is None:
                        log.debug("interrupting cell %s", cell.msg_id)
                        await self.interrupt()
                    cell.kill_at = now + grace
            if not alive():
                await self._drain(cell)
                return "done" if cell.idle else "died"
            wake = cell.kill_at if cell.kill_at is not None else deadline
            if cell.idle_at is not None:
                wake = min(wake, cell.idle_at + REPLY_WAIT)
            if cell.flood_at is not None:
                wake = min(wake, cell.flood_at + FLOOD_SETTLE)
            for msg in await self._receive(min(wake - now, POLL_INTERVAL)):
                self._handle(cell, msg)
        return "done"

    async def _drain(self, cell: Cell) -> None:
        """Take whatever already arrived (output printed just before the kernel died)."""
        while received := await self._receive(0.01):
            for msg in received:
                self._handle(cell, msg)

    def _handle(self, cell: Cell, msg: Message) -> None:
        if msg.parent_id != cell.msg_id or msg.sock is self.control:
            return
        msg_type, content = msg.msg_type, msg.content()
        if msg.sock is self.shell:
            if msg_type == "execute_reply":
                cell.reply = content
            return
        if msg_type == "status":
            cell.idle = content.get("execution_state") == "idle"
            return
        if msg_type == "clear_output":
            if content.get("wait"):
                cell.clear_pending = True
            else:
                cell.clear()
            return
        if msg_type not in ("stream", "display_data", "execute_result", "error"):
            return
        if cell.clear_pending:
            cell.clear()
        if msg_type == "stream":
            target = cell.stderr if content.get("name") == "stderr" else cell.stdout
            target.add_text(content.get("text", ""))
        elif msg_type == "error":
            cell.error = ExecutionError(
                name=content.get("ename", "Error"),
                value=content.get("evalue", ""),
                traceback=list(content.get("traceback", [])),
            )
        else:
            data = _mime_data(content.get("data", {}))
            size = sum(len(v) for v in data.values())
            if cell.results_bytes + size > cell.results_limit:
                cell.results_dropped += 1
                return
            cell.results_bytes += size
            cell.results.append(RichOutput(kind=msg_type, data=data))
