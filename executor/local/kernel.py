"""Talking to the sandbox's ipykernel over IPC sockets: readiness, one cell, interrupts.

A pump task reads shell, iopub and control all the time, between cells too, and applies each
message at once to the cell it belongs to, so nothing the kernel sends piles up in this
process. The kernel is the adversary here: a thread in it can send messages of any size on
its sockets, outside every cell. So ZeroMQ may hold at most `RCV_HWM` messages per socket, a
message above `max_message_bytes` breaks the connection (detected through a socket monitor),
and every byte read counts against the running cell's wire budget (past it the cell is a
flood and is stopped) or, between cells, against an idle budget (past it, or on a broken
connection, `on_broken` tells the sandbox to kill the kernel). There is no heartbeat channel:
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
from zmq.utils.monitor import parse_monitor_message

from executor.local.bwrap import KERNEL_RUN_DIR
from executor.models import ExecutionError, RichOutput
from executor.output import FLOOD_FACTOR, CappedStream, clean_text

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
# Messages ZeroMQ may queue per socket in this process. The kernel's side queues more (in the
# sandbox's memory), so a burst is delayed there, not dropped here.
RCV_HWM = 8
# What a cell may send on the wire, as a multiple of its flood cap: stdout, stderr, rich
# outputs and the JSON around them. Between cells the kernel gets the same budget.
WIRE_FACTOR = 4
# The largest message: the flood cap of text twice over (JSON escapes), plus headers.
MESSAGE_FACTOR = 2
MESSAGE_OVERHEAD = 1024 * 1024

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
    # Bytes of every message read while the cell runs, whatever its parent.
    wire_limit: int
    wire_bytes: int = 0
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

    @property
    def flooding(self) -> bool:
        """Far past what a cell may print or send: time to stop the code."""
        return self.stdout.flooding or self.stderr.flooding or self.wire_bytes >= self.wire_limit

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
        """The decoded content ({} when it is not a JSON object)."""
        # Undecodable bytes (a lone surrogate the kernel escaped) must not fail the cell.
        value = json.loads(self.raw_content.decode("utf-8", "replace"))
        return value if isinstance(value, dict) else {}


def _mime_data(data: Any) -> dict[str, str]:
    if not isinstance(data, dict):
        return {}
    return {
        clean_text(str(k)): clean_text(v) if isinstance(v, str) else json.dumps(v)
        for k, v in data.items()
    }


def wire_budget(max_output_bytes: int) -> int:
    """Bytes a cell (or the kernel between cells) may send before it counts as a flood."""
    return WIRE_FACTOR * FLOOD_FACTOR * max_output_bytes


def message_limit(max_output_bytes: int) -> int:
    """The largest message the host accepts from a kernel."""
    return MESSAGE_FACTOR * FLOOD_FACTOR * max_output_bytes + MESSAGE_OVERHEAD


class KernelClient:
    """The shell, iopub and control channels of one kernel, read by one pump task.

    `max_output_bytes` (the service's setting) sizes the message limit and the idle budget;
    `on_broken(reason)` is called once when the kernel floods between cells or breaks a
    connection, from the pump (it must not block).
    """

    def __init__(
        self,
        context: zmq.asyncio.Context,
        info: ConnectionInfo,
        *,
        max_output_bytes: int,
        on_broken: Callable[[str], None],
    ) -> None:
        self.info = info
        self.session = Session(
            key=info.key.encode(), signature_scheme="hmac-sha256", username="codeproxy"
        )
        self._idle_limit = wire_budget(max_output_bytes)
        self._on_broken = on_broken
        self.shell = context.socket(zmq.DEALER)
        self.iopub = context.socket(zmq.SUB)
        self.control = context.socket(zmq.DEALER)
        self.iopub.setsockopt(zmq.SUBSCRIBE, b"")
        self._monitors: list[zmq.asyncio.Socket] = []
        for name, sock in (("shell", self.shell), ("iopub", self.iopub), ("control", self.control)):
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.MAXMSGSIZE, message_limit(max_output_bytes))
            sock.setsockopt(zmq.RCVHWM, RCV_HWM)
            # The kernel binds ~0.5 s after we connect; retry the ipc path often.
            sock.setsockopt(zmq.RECONNECT_IVL, 10)
            # A message above MAXMSGSIZE drops the connection for good: watch for that.
            self._monitors.append(sock.get_monitor_socket(zmq.EVENT_DISCONNECTED))
            sock.connect(info.address(name))
        self.broken: str | None = None
        self._ready = False
        self._cell: Cell | None = None
        self._idle_bytes = 0
        self._info_requests: set[str] = set()
        self._info_replied = False
        self._heard = False
        self._changed = asyncio.Event()
        self._pump = asyncio.ensure_future(self._run_pump())

    async def aclose(self) -> None:
        """Stop the pump and close the sockets."""
        self._pump.cancel()
        await asyncio.wait({self._pump})
        for sock in (self.shell, self.iopub, self.control):
            sock.disable_monitor()
        for sock in (*self._monitors, self.shell, self.iopub, self.control):
            sock.close(linger=0)

    async def _run_pump(self) -> None:
        # One outstanding recv per socket, kept across rounds: cheaper than a Poller (which
        # re-registers every socket with the event loop on each poll).
        pending: dict[zmq.asyncio.Socket, asyncio.Future[list[bytes]]] = {}
        sockets = (self.shell, self.iopub, self.control, *self._monitors)
        try:
            while True:
                for sock in sockets:
                    if sock not in pending:
                        pending[sock] = asyncio.ensure_future(sock.recv_multipart())
                done, _ = await asyncio.wait(pending.values(), return_when=asyncio.FIRST_COMPLETED)
                for sock, future in list(pending.items()):
                    if future in done:
                        del pending[sock]
                        self._take(sock, future.result())
                self._changed.set()
        except zmq.ZMQError as e:
            log.debug("kernel socket closed: %s", e)
        finally:
            for future in pending.values():
                future.cancel()

    def _take(self, sock: zmq.asyncio.Socket, frames: list[bytes]) -> None:
        """Account for and apply one message."""
        if sock in self._monitors:
            # While the kernel starts, connections may come and go; once it is ready, only a
            # message above the size limit (or the kernel's death) drops one.
            event = parse_monitor_message(frames)["event"]
            if self._ready and event == zmq.EVENT_DISCONNECTED:
                self._break(
                    "its kernel lost its connection to the service (it died, or sent a "
                    "message larger than allowed)"
                )
            return
        size = sum(len(f) for f in frames)
        msg = self._decode(sock, frames)
        cell = self._cell
        if cell is not None:
            cell.wire_bytes += size
            if msg is not None:
                self._handle(cell, msg)
            return
        self._idle_bytes += size
        if self._idle_bytes > self._idle_limit:
            self._break(f"the kernel sent more than {self._idle_limit} bytes between cells")
        if msg is None:
            return
        if msg.sock is self.iopub:
            self._heard = True
        elif msg.sock is self.shell and msg.parent_id in self._info_requests:
            self._info_replied = True

    def _break(self, reason: str) -> None:
        if self.broken is None:
            self.broken = reason
            if self._cell is None:
                self._on_broken(reason)

    async def _wait_change(self, timeout: float) -> bool:
        """Wait until the pump applied something (True) or `timeout` passed (False).

        Callers clear `_changed` before looking at the state they wait on: nothing can run
        between that and this wait, so no wake-up is lost.
        """
        try:
            await asyncio.wait_for(self._changed.wait(), max(0.0, timeout))
        except TimeoutError:
            return False
        return True

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

    def _decode(self, sock: zmq.asyncio.Socket, frames: list[bytes]) -> Message | None:
        """Check the HMAC and read the header and parent only (None: not a valid message).

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
        try:
            parent_id = json.loads(parent).get("msg_id")
            msg_type = json.loads(header)["msg_type"]
        except (ValueError, TypeError, KeyError, AttributeError):
            log.warning("dropping a kernel message with a malformed header")
            return None
        if not isinstance(msg_type, str) or not isinstance(parent_id, str | None):
            return None
        return Message(sock, msg_type, parent_id, content)

    async def wait_ready(self, alive: Callable[[], bool], timeout: float) -> None:
        """Resend kernel_info until it is answered and iopub delivers (subscription is live)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        next_send = loop.time()
        while True:
            self._changed.clear()
            if self._info_replied and self._heard:
                self._ready = True
                return
            now = loop.time()
            if now >= end:
                raise KernelNotReady(f"no kernel_info_reply within {timeout:.1f} s")
            if not alive():
                raise KernelNotReady("the kernel process exited during start-up")
            if now >= next_send:
                self._info_requests.add(await self._send(self.shell, "kernel_info_request", {}))
                next_send = now + KERNEL_INFO_RESEND
            await self._wait_change(min(next_send, end) - now)

    async def execute(self, code: str, max_output_bytes: int) -> Cell:
        """Send an execute_request; collect() then gathers what it produces."""
        cell = Cell(
            "",
            CappedStream(max_output_bytes),
            CappedStream(max_output_bytes),
            wire_limit=wire_budget(max_output_bytes),
        )
        # The cell owns what arrives from now on (its messages may come before _send returns).
        self._cell = cell
        self._idle_bytes = 0
        cell.msg_id = await self._send(
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
        return cell

    async def interrupt(self) -> None:
        """interrupt_request on the control channel (interrupt_mode "message").

        Never signal the bwrap process: it does not forward signals and would just die.
        """
        await self._send(self.control, "interrupt_request", {})

    async def collect(
        self, cell: Cell, *, deadline: float, grace: float, alive: Callable[[], bool]
    ) -> Ending:
        """Gather the cell's output until it is over, interrupting it past the deadline.

        Returns "done", "kill" (interrupted but still running after `grace`, or its kernel
        broke a connection or flooded: the caller must kill the sandbox) or "died" (the kernel
        process exited).
        """
        loop = asyncio.get_running_loop()
        while not cell.done:
            self._changed.clear()
            now = loop.time()
            if not alive():
                await self._drain()
                return self._over(cell) if cell.idle else "died"
            if cell.idle and cell.idle_at is None:
                cell.idle_at = now
            if cell.idle_at is not None and now - cell.idle_at >= REPLY_WAIT:
                log.debug("cell %s: idle without execute_reply", cell.msg_id)
                break
            if self.broken is not None and not cell.flooded:
                # Nothing more can be trusted to arrive; give a dying process a moment to
                # show as dead (that is reported as such), then kill.
                cell.flooded = True
                cell.kill_at = min(cell.kill_at or float("inf"), now + FLOOD_SETTLE)
            if cell.kill_at is not None:
                if now >= cell.kill_at:
                    return "kill"
            elif not cell.idle:
                if cell.flood_at is None and cell.flooding:
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
            wake = cell.kill_at if cell.kill_at is not None else deadline
            if cell.idle_at is not None:
                wake = min(wake, cell.idle_at + REPLY_WAIT)
            if cell.flood_at is not None:
                wake = min(wake, cell.flood_at + FLOOD_SETTLE)
            await self._wait_change(min(wake - now, POLL_INTERVAL))
        return self._over(cell)

    def _over(self, cell: Cell) -> Ending:
        if self._cell is cell:
            self._cell = None
            if self.broken is not None:
                # It broke during a cell that still ended: the sandbox kills it now.
                self._on_broken(self.broken)
        return "done"

    async def _drain(self) -> None:
        """Let the pump take whatever already arrived (output printed just before death)."""
        self._changed.clear()
        while await self._wait_change(0.01):
            self._changed.clear()

    def _handle(self, cell: Cell, msg: Message) -> None:
        if msg.parent_id != cell.msg_id or msg.sock is self.control:
            return
        try:
            self._apply(cell, msg.msg_type, msg.sock, msg.content())
        except (ValueError, TypeError, AttributeError):
            # Not what Jupyter's protocol says; the code under test wrote it, so drop it.
            log.debug("dropping a malformed %s message", msg.msg_type)

    def _apply(
        self, cell: Cell, msg_type: str, sock: zmq.asyncio.Socket, content: dict[str, Any]
    ) -> None:
        if sock is self.shell:
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
            target.add_text(str(content.get("text", "")))
        elif msg_type == "error":
            cell.error = ExecutionError(
                name=clean_text(str(content.get("ename", "Error"))),
                value=clean_text(str(content.get("evalue", ""))),
                traceback=[clean_text(str(line)) for line in content.get("traceback") or []],
            )
        else:
            data = _mime_data(content.get("data", {}))
            size = sum(len(v) for v in data.values())
            if cell.results_bytes + size > cell.results_limit:
                cell.results_dropped += 1
                return
            cell.results_bytes += size
            cell.results.append(RichOutput(kind=msg_type, data=data))
