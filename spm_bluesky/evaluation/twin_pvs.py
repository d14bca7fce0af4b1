"""The twin's evaluation PVs over Channel Access: its true tip class, forced degradations.

``Sim:TipState`` and ``Sim:Degrade`` exist only on the twin and serve evaluation and labels,
never the decisions of a session on an instrument. Both helpers use caproto's threading
client: independent of the RunEngine's event loop, so a policy, an assessor or a document
callback can call them from inside a running plan.
"""

from __future__ import annotations

import threading
from typing import Any

from spm_bluesky import schema

#: Seconds to find and connect a ``Sim:`` PV. Longer than a read's timeout: a search is a
#: UDP datagram retried with back-off, and on a loaded machine (a test suite beside it) the
#: first answer has come after more than 10 s; waiting costs nothing when the IOC answers.
CONNECT_TIMEOUT_S = 30.0


class _SimPv:
    """One of the twin's ``Sim:`` PVs over caproto's threading client: independent of the
    RunEngine's event loop, so it can be used from inside a plan or a callback."""

    def __init__(self, pv: str, timeout: float) -> None:
        from caproto.threading.client import Context

        self.timeout = timeout
        self._context = Context()
        (self._pv,) = self._context.get_pvs(pv, timeout=CONNECT_TIMEOUT_S)
        self._pv.wait_for_connection(timeout=CONNECT_TIMEOUT_S)

    def close(self) -> None:
        """Drop the CA connection."""
        self._context.disconnect()


class TruthReader(_SimPv):
    """Reads the twin's true tip class (``<prefix>Sim:TipState``): a blocking CA read,
    fresh on each call (no monitor lag)."""

    def __init__(self, prefix: str, timeout: float = 5.0) -> None:
        super().__init__(prefix + "Sim:TipState", timeout)

    def __call__(self) -> str:
        """The true tip class now, e.g. ``"good"`` or ``"blunt"``."""
        from caproto import ChannelType

        response = self._pv.read(data_type=ChannelType.STRING, timeout=self.timeout)
        return response.data[0].decode()


class DegradeSchedule(_SimPv):
    """A document callback that degrades the tip every ``every_hours`` of instrument time.

    Counts from the first frame's clock; the put (``Sim:Degrade``) goes from a thread with
    caproto's client, as an outside event would, and never blocks the RunEngine.
    """

    def __init__(self, prefix: str, every_hours: float, timeout: float = 10.0) -> None:
        super().__init__(prefix + "Sim:Degrade", timeout)
        self.every = every_hours * 3600.0
        self.forced = 0
        self._start: float | None = None
        self._puts: list[threading.Thread] = []

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        """Degrade the tip once the frame's clock has passed the next scheduled time."""
        clock = doc.get("data", {}).get(schema.SCAN_CLOCK) if name == "event" else None
        if clock is None:
            return
        if self._start is None:
            self._start = float(clock)
        if float(clock) - self._start >= (self.forced + 1) * self.every:
            self.forced += 1
            put = threading.Thread(target=self._pv.write, args=([1],),
                                   kwargs={"wait": True, "timeout": self.timeout},
                                   daemon=True)
            put.start()
            self._puts.append(put)

    def close(self) -> None:
        """Let the puts in flight finish, then drop the CA connection."""
        for put in self._puts:
            put.join(self.timeout)
        super().close()
