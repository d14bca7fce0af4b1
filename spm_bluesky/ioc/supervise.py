"""Serve the IOC's PVs only while its instrument answers.

A lost controller must look, to the control side, like a lost IOC: the session's link
monitor then pauses it and resumes it once the PVs are back. So while the backend is
unreachable the IOC stops serving Channel Access (clients see a disconnect), tries to
reconnect every :data:`RETRY_INTERVAL` seconds, gives the controller its settings again,
and serves again on the same port. While it serves, the instrument's state is polled every
:data:`POLL_INTERVAL` seconds between commands, which also notices a controller that went
away while idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from caproto.asyncio.utils import _TransportWrapper

from spm_bluesky.ioc.backend import BackendError, ControllerLost
from spm_bluesky.ioc.ca_server import TunedContext

if TYPE_CHECKING:
    from spm_bluesky.ioc.stm_ioc import StmIOC

log = logging.getLogger(__name__)


class RestartableContext(TunedContext):
    """A :class:`TunedContext` that can be followed by another on the same port.

    caproto 1.3 never closes the asyncio server that accepts clients; it closes the socket
    under it, and the event loop's stale registration of that descriptor then swallows the
    next server's connections. This one closes its server when it stops.
    """

    async def server_accept_loop(self, sock: Any) -> None:
        """Accept clients on ``sock`` until cancelled, then close the server."""
        def new_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            transport = _TransportWrapper(reader, writer)
            self.server_tasks.create(self.tcp_handler(transport, transport.getpeername()))

        server = await asyncio.start_server(new_client, sock=sock)
        try:
            await asyncio.Event().wait()
        finally:
            server.close()

#: Seconds between reconnection attempts while the instrument is unreachable.
RETRY_INTERVAL = 0.5
#: Seconds between status polls while serving.
POLL_INTERVAL = 0.5


async def connect(ioc: StmIOC) -> None:
    """Connect the backend, retrying until it answers (logged once per outage)."""
    warned = False
    while True:
        try:
            await ioc.backend.connect()
            return
        except ControllerLost as error:
            if not warned:
                log.warning("%s unreachable (%s): retrying every %g s", ioc.backend.name,
                            error, RETRY_INTERVAL)
                warned = True
        await asyncio.sleep(RETRY_INTERVAL)


async def _poll(ioc: StmIOC, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await ioc.refresh()
        except BackendError as error:
            log.warning("status poll refused: %s", error)
        except ControllerLost:
            return  # the supervisor sees it through wait_lost


async def _hang_up(circuits: list[Any]) -> None:
    """Close the clients' connections: a cancelled caproto Context leaves them open.

    ``_on_disconnect`` also drops the circuits' subscriptions from the PVs, which outlive
    the Context.
    """
    for circuit in circuits:
        # caproto 1.3's _on_disconnect ends by calling a close() its transport lacks.
        with contextlib.suppress(Exception):
            await circuit._on_disconnect()
        circuit.client.writer.close()


async def serve_supervised(ioc: StmIOC, host: str, on_ready: Callable[[int], None],
                           poll_interval: float = POLL_INTERVAL) -> None:
    """Serve ``ioc`` on ``host`` until cancelled or SIGTERM, disconnecting every client
    while the backend is lost; ``on_ready(tcp_port)`` the first time it serves.

    The backend must be connected already (:func:`connect`).
    """
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    first = True
    try:
        while True:
            context = RestartableContext(ioc.pvdb, [host])

            async def ready_hook(async_lib, context: TunedContext = context) -> None:
                nonlocal first
                if first:
                    first = False
                    on_ready(context.port)
                else:
                    log.warning("%s answers again: serving on port %d", ioc.backend.name,
                                context.port)

            serving = asyncio.create_task(context.run(startup_hook=ready_hook))
            lost = asyncio.create_task(ioc.backend.wait_lost())
            poller = asyncio.create_task(_poll(ioc, poll_interval))
            try:
                await asyncio.wait({serving, lost}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                circuits = list(context.circuits)
                for part in (poller, lost, serving):
                    part.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await part
                await _hang_up(circuits)
            if not lost.done() or lost.cancelled():
                return  # the server ended by itself
            log.warning("%s lost: PVs disconnected until it answers", ioc.backend.name)
            await connect(ioc)
            with contextlib.suppress(BackendError, ControllerLost):
                await ioc.refresh()
    except asyncio.CancelledError:
        pass
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
