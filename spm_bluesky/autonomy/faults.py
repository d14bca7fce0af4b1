"""Faults of an autonomous session as Bluesky suspenders: lost contact and a lost IOC.

Bluesky's suspenders (:mod:`bluesky.suspenders`) watch a signal through the ophyd
``subscribe(callback, event_type, run)`` / ``clear_sub`` API and call ``callback(value=...)``.
:class:`ValueWatch` gives an ophyd-async signal that API, so the library's
``SuspendBoolLow`` works unchanged on:

- ``Status:Contact`` (lost tunnelling contact: the suspender's ``pre_plan`` approaches
  again, the session resumes once contact reads 1);
- :class:`LinkMonitor`'s ``connected`` soft signal, which follows the Channel Access
  connection of the IOC (a CA monitor with ``notify_disconnect``): 0 while the IOC is gone,
  1 once it serves again, so a killed and restarted IOC pauses and resumes the session.

A suspender rewinds to the last checkpoint and replays: images are taken again, events
repeat with the same ``seq_num``, and readers de-duplicate (``storage.dedupe_events``).

Two catches (bluesky 1.15):

- a status that *fails* while the RunEngine is suspended, or after it resumed, still aborts
  the plan, and a CA operation in flight when the IOC dies fails at once ("Virtual circuit
  disconnect") or times out later;
- a rewind does not clear the RunEngine's status groups: a status triggered just before the
  suspension, whose ``wait`` had not started, stays in its group, and the replayed ``wait``
  waits for it as well as for the replayed trigger's status.

:class:`GuardedReadable` and :class:`GuardedScan` therefore wrap the devices the scan loop
touches. A read that fails because the link is gone waits until the suspension cancels it
(or, should none come, reads again once the IOC is back); a read that completes as the
suspension cancels it is cancelled all the same (Python 3.11's ``wait_for`` would return
it). A frame whose trigger fails during an outage (or across one) completes, without a
frame, once the IOC is back: the suspender has rewound by then and takes the image again,
and a replayed ``wait`` on the old group finishes with the new frame.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from bluesky.protocols import Reading
from event_model import DataKey
from ophyd_async.core import AsyncStatus, SignalR, StandardReadable, soft_signal_r_and_setter

from spm_bluesky.devices.stm import ScanDetector

#: Seconds a failed CA operation waits for the link monitor to report the IOC gone.
DISCONNECT_GRACE = 2.0

T = TypeVar("T")


class ValueWatch:
    """An ophyd-async signal seen through the ophyd subscription API that suspenders use."""

    def __init__(self, signal: SignalR[Any]) -> None:
        self.signal = signal
        self._wrappers: dict[Callable[..., Any], Callable[[dict[str, Any]], None]] = {}

    @property
    def name(self) -> str:
        """The watched signal's name (suspenders print it)."""
        return self.signal.name

    def __repr__(self) -> str:
        return f"ValueWatch({self.signal.source})"

    def subscribe(self, callback: Callable[..., Any], event_type: Any = None,
                  run: bool = True) -> None:
        """Call ``callback(value=...)`` now and on every change of the signal."""

        def on_reading(reading: dict[str, Any]) -> None:
            callback(value=reading[self.signal.name]["value"])

        self._wrappers[callback] = on_reading
        self.signal.subscribe_reading(on_reading)

    def clear_sub(self, callback: Callable[..., Any]) -> None:
        """Stop calling ``callback``."""
        wrapper = self._wrappers.pop(callback, None)
        if wrapper is not None:
            self.signal.clear_sub(wrapper)


class LinkMonitor(StandardReadable):
    """``connected`` is 1 while the IOC answers on ``pv`` over Channel Access, else 0.

    :meth:`start` (a coroutine; run it in the RunEngine's loop, e.g. with
    ``bps.wait_for([monitor.start])``) subscribes with ``notify_disconnect``, so a dropped
    circuit sets 0 at once and the reconnection (CA searches again by itself) sets 1.
    """

    def __init__(self, pv: str, name: str = "link") -> None:
        self.pv = pv
        with self.add_children_as_readables():
            self.connected, self._set_connected = soft_signal_r_and_setter(int, 1)
        self._subscription: Any = None
        self._lost = asyncio.Event()
        self._up = asyncio.Event()
        self._up.set()
        #: Reconnections seen so far (devices re-apply settings when it moves on).
        self.generation = 0
        super().__init__(name=name)

    def set_state(self, up: bool) -> None:
        """Record whether the IOC answers; the CA monitor calls this (in the event loop)."""
        if up and self._lost.is_set():
            self.generation += 1
        if up:
            self._lost.clear()
            self._up.set()
        else:
            self._up.clear()
            self._lost.set()
        self._set_connected(1 if up else 0)

    async def wait_up(self) -> None:
        """Return once the IOC answers (at once if it does now)."""
        await self._up.wait()

    async def lost_within(self, timeout: float) -> bool:
        """True if the IOC is, or within ``timeout`` seconds turns out to be, unreachable."""
        # asyncio.timeout, not wait_for: Python 3.11's wait_for swallows a cancellation that
        # comes as the wait ends, and the link dropping both ends this wait and makes the
        # suspender cancel the RunEngine's task.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._lost.wait()
        return self._lost.is_set()

    async def start(self) -> None:
        """Start following the connection (idempotent)."""
        from aioca import camonitor

        if self._subscription is not None:
            return

        def on_update(value: Any) -> None:
            self.set_state(bool(getattr(value, "ok", True)))

        self._subscription = camonitor(self.pv, on_update, notify_disconnect=True)

    async def stop(self) -> None:
        """Stop following the connection."""
        if self._subscription is not None:
            self._subscription.close()
            self._subscription = None


def _raise_swallowed_cancel(task: asyncio.Task[Any] | None, cancels_before: int) -> None:
    """Raise the cancellation that an inner ``asyncio.wait_for`` swallowed.

    ophyd-async and aioca time CA operations out with ``asyncio.wait_for``, which in Python
    3.11 returns the operation's result when the operation completes in the same loop turn as
    the task is cancelled. A suspender cancels the RunEngine's task exactly then (an IOC that
    dies as a read answers), and the RunEngine would send the late reading into the rewound
    plan ("can't send non-None value to a just-started generator"). The task's count of
    pending cancellations still shows the request, so it is raised here instead.
    """
    if task is not None and task.cancelling() > cancels_before:
        raise asyncio.CancelledError


class GuardedReadable:
    """A readable device whose CA failures during an IOC outage wait for the IOC.

    Reads and describes as ``device`` does (same data keys), so documents look the same.
    """

    def __init__(self, device: Any, link: LinkMonitor) -> None:
        self.device = device
        self.link = link
        self.parent = None

    @property
    def name(self) -> str:
        """The wrapped device's name."""
        return self.device.name

    async def _guard(self, operation: Callable[[], Awaitable[T]]) -> T:
        task = asyncio.current_task()
        cancels_before = task.cancelling() if task is not None else 0
        try:
            result = await operation()
        except Exception:
            if not await self.link.lost_within(DISCONNECT_GRACE):
                raise
            # The IOC is gone: the suspension cancels this read. Should it not, the IOC is
            # read again once it is back, so that nothing waits forever.
            await self.link.wait_up()
            result = await operation()
        _raise_swallowed_cancel(task, cancels_before)
        return result

    async def read(self) -> dict[str, Reading]:
        """The device's reading (waits while the IOC is gone)."""
        return await self._guard(self.device.read)

    async def describe(self) -> dict[str, DataKey]:
        """The device's data keys."""
        return await self._guard(self.device.describe)

    async def read_configuration(self) -> dict[str, Reading]:
        """The device's configuration reading."""
        return await self._guard(self.device.read_configuration)

    async def describe_configuration(self) -> dict[str, DataKey]:
        """The device's configuration data keys."""
        return await self._guard(self.device.describe_configuration)


class GuardedScan(GuardedReadable):
    """The STM's scan detector, moved to :attr:`target` by its own ``trigger()``.

    Positioning is part of the trigger so that every CA put of an image is guarded. After a
    reconnection (a restarted IOC starts from its defaults) the frame's size and pixels are
    written again before the next frame.
    """

    def __init__(self, scan: ScanDetector, link: LinkMonitor, size: float, pixels: int) -> None:
        super().__init__(scan, link)
        self.scan = scan
        self.size = size
        self.pixels = pixels
        self.target = (0.0, 0.0)
        self._generation = link.generation

    async def _frame(self) -> None:
        if self._generation != self.link.generation:
            await self.scan.pixels.set(self.pixels)
            await self.scan.size.set(self.size)
            self._generation = self.link.generation
        x, y = self.target
        await asyncio.gather(self.scan.center_x.set(x), self.scan.center_y.set(y))
        await self.scan.trigger()

    async def _guarded_frame(self) -> None:
        generation = self.link.generation
        try:
            await self._frame()
        except Exception:
            outage = (self.link.generation != generation
                      or await self.link.lost_within(DISCONNECT_GRACE))
            if not outage:
                raise
            # The link suspender rewinds and takes this frame again; complete (without a
            # frame) once the IOC is back, so that a replayed wait on this group ends.
            await self.link.wait_up()

    def trigger(self) -> AsyncStatus:
        """Move to :attr:`target` and scan one frame; during an IOC outage, complete
        without a frame once the IOC is back (the suspender takes it again)."""
        return AsyncStatus(self._guarded_frame())
