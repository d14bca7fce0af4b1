"""Serving a PVGroup over Channel Access, with four changes to caproto 1.3's asyncio server.

- TCP_NODELAY: caproto makes its listening socket with protocol 0, so asyncio does not set
  TCP_NODELAY on accepted clients; libca clients then wait about 40 ms for a delayed ACK
  on every put-callback/get pair (docs/reference/pitfalls.md). :class:`TunedContext` sets it.
- Refused put-callbacks: caproto answers a failed write-notify with a CA error message;
  libca copes, but caproto's own threading client never completes the put and times out.
  :class:`TunedCircuit` answers with a write-notify response carrying ECA_PUTFAIL, as
  EPICS base's RSRV does, which both clients understand.
- Monitor latency: caproto batches subscription updates that come within 10 ms of each
  other and then waits until none has come for 10 ms, so a client acquiring frames in a
  loop waits about 10 ms per ``Scan:FrameCounter`` monitor (65 frames/s measured).
  :class:`TunedCircuit` sends what is already queued at once, and sends the monitors a
  put caused ahead of the put's response, in one segment.
- Logging: a refused put is logged as one warning line instead of a traceback, and beacons
  refused because no CA repeater listens on loopback are not logged at all.
- Bounded requests: caproto buffers a message until its whole payload has arrived, however
  large its header says it is, so one client could make the IOC hold gigabytes.
  :class:`TunedCircuit` reads each header as it arrives and drops the client whose message
  is larger than the largest legal request (:func:`max_request_bytes`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import signal
import socket
from collections.abc import Callable
from typing import Any

import caproto as ca
from caproto._commands import bytes_needed_for_command
from caproto.asyncio.server import Context, VirtualCircuit
from caproto.server.common import DisconnectedCircuit

logger = logging.getLogger(__name__)

#: Header bytes of a CA message (16, and 8 more for an extended one).
CA_HEADER_BYTES = 24
#: Room for the largest non-array request (a search, a channel create: a PV name ...).
MIN_REQUEST_BYTES = 16384


def max_request_bytes(pvdb: dict) -> int:
    """The largest payload a client may legally send: a put of the longest PV as doubles."""
    longest = max((getattr(data, "max_length", 1) or 1 for data in pvdb.values()), default=1)
    return max(MIN_REQUEST_BYTES, 8 * int(longest) + CA_HEADER_BYTES)


class TunedCircuit(VirtualCircuit):
    """A server circuit: ECA_PUTFAIL write-notify replies, monitors sent without waiting,
    oversized messages refused."""

    async def recv(self):
        """Receive as caproto does, then drop the client if the message being buffered
        claims more than :func:`max_request_bytes` (checked on every 4 KiB received, so at
        most one read is held beyond the header)."""
        await super().recv()
        buffered = self.circuit._data
        if len(buffered) < 16:
            return
        header, _ = bytes_needed_for_command(buffered, self.circuit.their_role)
        limit = self.context.max_request_bytes
        if header.payload_size > limit:
            logger.warning("client %s sent a message of %d bytes (more than %d, the largest "
                           "legal request): disconnected", self.circuit.address,
                           header.payload_size, limit)
            self.circuit._data = bytearray()
            await self._on_disconnect()
            raise DisconnectedCircuit()

    async def send(self, *commands):
        """Send ``commands``; a put response goes out together with the monitors queued by now.

        Write-notify errors become ECA_PUTFAIL responses. The monitors of what the put
        changed (``Scan:FrameCounter`` after ``Scan:Acquire``) precede its response in the
        same TCP segment: one send fewer per command, and a client sees the new values by
        the time its put completes.
        """
        commands = tuple(_as_put_reply(command) for command in commands)
        if any(isinstance(command, ca.WriteNotifyResponse) for command in commands):
            commands = (*await self._queued_monitors(), *commands)
        await super().send(*commands)

    async def _queued_monitors(self) -> list[ca.EventAddResponse]:
        # A PV write queues its monitor on the context's queue first; one yield lets the
        # context's loop (which does not suspend while it has items) pass it to ours.
        if not self.context.subscription_queue.empty():
            await asyncio.sleep(0)
        live = {sub.subscriptionid for subs in self.subscriptions.values() for sub in subs}
        monitors: list[Any] = []
        while True:
            try:
                command = self.subscription_queue.get_nowait()()
            except asyncio.QueueEmpty:
                return monitors
            if command is not None and command.subscriptionid in live:  # not expired
                monitors.append(command)

    async def get_from_sub_queue(self, timeout=None):
        """Next queued subscription update; with a timeout, only one already queued (or None).

        caproto calls this with a timeout to collect a batch; not waiting keeps batching
        under load (everything queued goes out together) without adding latency.
        """
        if timeout is None:
            return await self.subscription_queue.get()
        try:
            return self.subscription_queue.get_nowait()
        except asyncio.QueueEmpty:
            return None


def _as_put_reply(command: ca.Message) -> ca.Message:
    if isinstance(command, ca.ErrorResponse):
        request = command.original_request
        if request.command == ca.WriteNotifyRequest.ID:
            return ca.WriteNotifyResponse(data_type=request.data_type,
                                          data_count=request.data_count,
                                          status=ca.CAStatus.ECA_PUTFAIL,
                                          ioid=request.parameter2)
    return command


class TunedContext(Context):
    """caproto's asyncio server Context: TCP_NODELAY and a :class:`TunedCircuit` per client."""

    CircuitClass = TunedCircuit

    def __init__(self, pvdb: dict, *args: Any, **kwargs: Any) -> None:
        super().__init__(pvdb, *args, **kwargs)
        self.max_request_bytes = max_request_bytes(pvdb)

    async def tcp_handler(self, client, addr):
        """Turn Nagle's algorithm off for this client, then serve it as usual."""
        sock = client.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return await super().tcp_handler(client, addr)


class QuietCaprotoFilter(logging.Filter):
    """Shorten refused-put records to one line; drop beacons refused by an absent repeater."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        error = record.exc_info[1] if record.exc_info else None
        if message.startswith("Failed to send beacon"):
            return not isinstance(getattr(error, "__cause__", None), ConnectionRefusedError)
        if message.startswith("Invalid write request") and error is not None:
            record.msg, record.args, record.exc_info = "put failed: %s: %s", (
                type(error).__name__, error), None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def configure_environment(host: str, port: int | None) -> None:
    """Set the server's CA variables in ``os.environ`` before a Context reads them.

    ``port`` (if given) is the UDP search port and the first TCP port tried. Beacons go
    to the CA repeater port, as in EPICS base; an IOC bound to loopback sends them to
    loopback only, never to the broadcast address, unless the environment says otherwise.
    """
    if port is not None:
        os.environ["EPICS_CA_SERVER_PORT"] = str(port)
        os.environ["EPICS_CAS_SERVER_PORT"] = str(port)
    if "EPICS_CA_REPEATER_PORT" in os.environ:
        os.environ.setdefault("EPICS_CAS_BEACON_PORT", os.environ["EPICS_CA_REPEATER_PORT"])
    if ipaddress.ip_address(host).is_loopback:
        os.environ.setdefault("EPICS_CAS_BEACON_ADDR_LIST", host)
        os.environ.setdefault("EPICS_CAS_AUTO_BEACON_ADDR_LIST", "NO")


async def serve(pvdb: dict, host: str, on_ready: Callable[[int], None]) -> None:
    """Serve ``pvdb`` on ``host`` until cancelled or SIGTERM; ``on_ready(tcp_port)`` once bound."""
    context = TunedContext(pvdb, [host])

    async def ready_hook(async_lib) -> None:
        on_ready(context.port)

    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        await context.run(startup_hook=ready_hook)
    except asyncio.CancelledError:
        pass
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
