"""ophyd-async devices over the STM's PV contract (Channel Access).

:class:`STM` is the whole microscope. Its parts map the PV groups of the PV table
(docs/reference/pv-table.md):

- ``scan`` (:class:`ScanDetector`): a Bluesky detector; ``trigger()`` scans one frame and
  ``read()`` gives it as a 2-D float32 image in metres with the frame's parameters, the
  approach area and the instrument clock.
- ``tip`` (:class:`Tip`): conditioning; ``tip.pulse`` and ``tip.dip`` are triggerable
  commands whose status completes when the action is done.
- ``coarse`` (:class:`Coarse`): ``approach``, ``withdraw`` and ``move_area`` commands.
- ``status`` (:class:`Status`): contact, crash flag and count, clock, z, ranges, area index;
  also the tunnelling current (``status.current``), read on demand and not recorded.
- ``sim`` (:class:`SimControls`): only with ``sim=True``; the twin's extra PVs, so the same
  device works on a real controller without them.

The devices only speak Channel Access: this module never imports the twin or the IOC
(layering rule), so it drives a real controller behind the same PVs unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

import numpy as np
from bluesky.protocols import Reading, Triggerable
from event_model import DataKey
from ophyd_async.core import (
    CALCULATE_TIMEOUT,
    Array1D,
    AsyncStatus,
    CalculatableTimeout,
    Device,
    Reference,
    SignalDatatypeT,
    SignalR,
    SignalRW,
    StandardReadable,
    StandardReadableFormat,
    soft_signal_rw,
    wait_for_value,
)
from ophyd_async.epics.core import CaSignalBackend, epics_signal_r

from spm_bluesky.domain.limits import DEFAULT_PREFIX

#: How long a monitor may lag behind a completed put-callback (s).
MONITOR_LAG_TIMEOUT = 10.0
#: Time limits of the commands (s): generous for a real instrument in real time.
TIP_ACTION_TIMEOUT = 60.0
APPROACH_TIMEOUT = 900.0
WITHDRAW_TIMEOUT = 120.0
MOVE_AREA_TIMEOUT = 1200.0


class PutRefused(RuntimeError):
    """The IOC refused a put: a CA error such as a value outside its limits."""


class CheckedSignalRW(SignalRW[SignalDatatypeT]):
    """A ``SignalRW`` whose ``set()`` raises :class:`PutRefused` when the IOC refuses the put.

    Works around a silent failure in ophyd-async 0.21: ``SignalRW.set`` runs the put in a
    stamina/tenacity retry loop whose outcome passes through
    ``concurrent.futures.Future.result()``, which ignores falsy exceptions; aioca's
    ``CANothing`` error is falsy, so a refused put (``ECA_PUTFAIL``) would look like success.
    """

    @AsyncStatus.wrap
    async def set(
        self, value: SignalDatatypeT, timeout: CalculatableTimeout = "CALCULATE_TIMEOUT"
    ) -> None:
        """Put ``value`` and wait for the put-callback; raise if the IOC refuses it."""
        seconds = self._timeout if timeout == CALCULATE_TIMEOUT else cast(float | None, timeout)
        backend = self._connector.backend
        source = backend.source(self.name, read=False)
        try:
            await asyncio.wait_for(backend.put(value), seconds)
        except TimeoutError as exc:
            raise TimeoutError(f"put {value!r} to {source}: no completion in {seconds} s") from exc
        except Exception as exc:
            if exc:
                raise
            raise PutRefused(f"put {value!r} to {source} refused: {exc}") from exc


def ca_rw(datatype: type[SignalDatatypeT], pv: str) -> CheckedSignalRW[SignalDatatypeT]:
    """A read-write Channel Access signal whose puts wait for completion and fail loudly."""
    return CheckedSignalRW(CaSignalBackend(datatype, pv, pv))


async def wait_until(signal: SignalR[Any], done: Callable[[Any], bool]) -> None:
    """Wait until ``done(value)`` holds for ``signal``, read fresh from the IOC first.

    After a completed put-callback the IOC already holds the new value, so one CA get
    usually settles it; only otherwise wait on the monitor (which caproto may send later,
    batched up to about 10 ms) for up to :data:`MONITOR_LAG_TIMEOUT`.
    """
    if not done(await signal.get_value(cached=False)):
        await wait_for_value(signal, done, timeout=MONITOR_LAG_TIMEOUT)


def counter_advanced(before: Any, now: Any) -> bool:
    """True once a counter has moved past its value from before the command."""
    return now > before


class Command(Device, Triggerable):
    """A put-1 command PV whose put-callback completes when the action is done.

    ``trigger()`` puts 1 and waits for the put-callback. When ``watch`` is given it then
    waits until ``done(value_before, value_now)`` holds for that signal, because caproto
    sends monitors separately from put responses (docs/reference/pitfalls.md): without the wait a
    reader could still see the state from before the command.
    """

    def __init__(
        self,
        pv: str,
        timeout: float,
        watch: SignalR[Any] | None = None,
        done: Callable[[Any, Any], bool] = counter_advanced,
        name: str = "",
    ) -> None:
        self.command = ca_rw(int, pv)
        self.timeout = timeout
        self._watch = Reference(watch) if watch is not None else None
        self._done = done
        super().__init__(name=name)

    @AsyncStatus.wrap
    async def trigger(self) -> None:
        """Do the action; the status completes when it is done (or raises on a CA error)."""
        if self._watch is None:
            await self.command.set(1, timeout=self.timeout)
            return
        watch = self._watch()
        before = await watch.get_value(cached=False)
        await self.command.set(1, timeout=self.timeout)
        await wait_until(watch, lambda now: self._done(before, now))


def frame_duration(pixels: int, size: float, speed: float) -> float:
    """Real-time duration of one frame (s): trace and retrace of every line."""
    return pixels * 2 * size / speed


class ScanDetector(StandardReadable, Triggerable):
    """Scans one frame per ``trigger()``; ``read()`` gives the image and where it was taken.

    Read keys (with the device named ``stm``): ``stm-scan-image`` (float32, metres,
    ``pixels x pixels``, row 0 scanned first), ``-center_x``, ``-center_y``, ``-size``,
    ``-pixels``, ``-area_index``, ``-frame_counter``, ``-clock``. Configuration: ``-bias``,
    ``-setpoint``, ``-speed``. Every value is read fresh from the IOC (no monitor cache).
    """

    def __init__(self, prefix: str, name: str = "") -> None:
        with self.add_children_as_readables(StandardReadableFormat.HINTED_UNCACHED_SIGNAL):
            self.center_x = ca_rw(float, prefix + "Scan:CenterX")
            self.center_y = ca_rw(float, prefix + "Scan:CenterY")
        with self.add_children_as_readables(StandardReadableFormat.UNCACHED_SIGNAL):
            self.size = ca_rw(float, prefix + "Scan:Size")
            self.pixels = ca_rw(int, prefix + "Scan:Pixels")
            self.area_index = epics_signal_r(int, prefix + "Coarse:AreaIndex")
            self.frame_counter = epics_signal_r(int, prefix + "Scan:FrameCounter")
            self.clock = epics_signal_r(float, prefix + "Status:Clock")
        with self.add_children_as_readables(StandardReadableFormat.CONFIG_SIGNAL):
            self.bias = ca_rw(float, prefix + "Scan:Bias")
            self.setpoint = ca_rw(float, prefix + "Scan:Setpoint")
            self.speed = ca_rw(float, prefix + "Scan:Speed")
        self.image = epics_signal_r(Array1D[np.float32], prefix + "Scan:Image")
        self.acquire = ca_rw(int, prefix + "Scan:Acquire")
        self.abort = ca_rw(int, prefix + "Scan:Abort")
        #: The frame time limit is ``timeout_margin + timeout_factor * frame duration``.
        self.timeout_factor = 3.0
        self.timeout_margin = 60.0
        super().__init__(name=name)

    @AsyncStatus.wrap
    async def trigger(self) -> None:
        """Scan one frame; complete once ``Scan:FrameCounter`` shows the new frame."""
        before, pixels, size, speed = await asyncio.gather(
            self.frame_counter.get_value(cached=False),
            self.pixels.get_value(cached=False),
            self.size.get_value(cached=False),
            self.speed.get_value(cached=False),
        )
        timeout = self.timeout_margin + self.timeout_factor * frame_duration(pixels, size, speed)
        await self.acquire.set(1, timeout=timeout)
        await wait_until(self.frame_counter, lambda now: now > before)

    async def describe(self) -> dict[str, DataKey]:
        """Describe the scalars and the image as a ``pixels x pixels`` float32 array."""
        described, pixels = await asyncio.gather(
            super().describe(), self.pixels.get_value(cached=False)
        )
        described[self.image.name] = DataKey(
            source=self.image.source,
            dtype="array",
            dtype_numpy="<f4",
            shape=[int(pixels), int(pixels)],
            units="m",
        )
        return described

    async def read(self) -> dict[str, Reading]:
        """Read the scalars and the last frame, reshaped to ``pixels x pixels``."""
        readings, image = await asyncio.gather(super().read(), self._read_image())
        readings.update(image)
        return readings

    async def _read_image(self) -> dict[str, Reading]:
        pixels, raw = await asyncio.gather(
            self.pixels.get_value(cached=False), self.image.read(cached=False)
        )
        reading = raw[self.image.name]
        flat = np.asarray(reading["value"], dtype=np.float32)
        n = int(pixels)
        if flat.size < n * n:
            raise RuntimeError(
                f"{self.image.source} holds {flat.size} values; a {n} x {n} frame needs {n * n}"
            )
        image = flat[: n * n].reshape(n, n)
        return {self.image.name: cast(Reading, {**reading, "value": image})}


class Tip(StandardReadable):
    """Conditioning: where and how the next action is applied, and the pulse and dip commands.

    ``action_name`` is a soft signal (no PV): plans write the name of the action they apply,
    so the ``action`` stream records it beside the parameters.
    """

    def __init__(self, prefix: str, name: str = "") -> None:
        with self.add_children_as_readables(StandardReadableFormat.UNCACHED_SIGNAL):
            self.action_name = soft_signal_rw(str, "")
            self.action_x = ca_rw(float, prefix + "Tip:ActionX")
            self.action_y = ca_rw(float, prefix + "Tip:ActionY")
            self.pulse_bias = ca_rw(float, prefix + "Tip:PulseBias")
            self.pulse_time = ca_rw(float, prefix + "Tip:PulseTime")
            self.dip_depth = ca_rw(float, prefix + "Tip:DipDepth")
            self.action_counter = epics_signal_r(int, prefix + "Tip:ActionCounter")
        self.pulse = Command(prefix + "Tip:Pulse", TIP_ACTION_TIMEOUT, self.action_counter)
        self.dip = Command(prefix + "Tip:Dip", TIP_ACTION_TIMEOUT, self.action_counter)
        super().__init__(name=name)


class Status(StandardReadable):
    """The instrument's condition, read fresh on every ``read()`` (for baseline streams)."""

    def __init__(self, prefix: str, name: str = "") -> None:
        with self.add_children_as_readables(StandardReadableFormat.UNCACHED_SIGNAL):
            self.contact = epics_signal_r(int, prefix + "Status:Contact")
            self.crashed = epics_signal_r(int, prefix + "Status:Crashed")
            self.crash_count = epics_signal_r(int, prefix + "Status:CrashCount")
            self.clock = epics_signal_r(float, prefix + "Status:Clock")
            self.z = epics_signal_r(float, prefix + "Status:Z")
            self.xy_range = epics_signal_r(float, prefix + "Status:Range")
            self.z_range = epics_signal_r(float, prefix + "Status:ZRange")
            self.area_index = epics_signal_r(int, prefix + "Coarse:AreaIndex")
        # Not a readable: read on demand (``bps.rd``), so the stored streams keep their keys.
        self.current = epics_signal_r(float, prefix + "Status:Current")
        super().__init__(name=name)


class Coarse(Device):
    """Coarse motion: approach into tunnelling range, withdraw, move to a fresh area.

    ``approach`` completes once ``Status:Contact`` reads 1, ``withdraw`` once it reads 0,
    ``move_area`` once ``Coarse:AreaIndex`` has moved on.
    """

    def __init__(
        self, prefix: str, contact: SignalR[int], area_index: SignalR[int], name: str = ""
    ) -> None:
        self.approach = Command(
            prefix + "Coarse:Approach", APPROACH_TIMEOUT, contact, lambda _, now: now == 1
        )
        self.withdraw = Command(
            prefix + "Coarse:Withdraw", WITHDRAW_TIMEOUT, contact, lambda _, now: now == 0
        )
        self.move_area = Command(prefix + "Coarse:MoveArea", MOVE_AREA_TIMEOUT, area_index)
        super().__init__(name=name)


class SimControls(StandardReadable):
    """The twin's own PVs (``Sim:*``): absent on a real controller.

    ``tip_state`` is the TRUE tip class: for labels and evaluation, never for decisions.
    """

    def __init__(self, prefix: str, name: str = "") -> None:
        with self.add_children_as_readables(StandardReadableFormat.UNCACHED_SIGNAL):
            self.tip_state = epics_signal_r(str, prefix + "Sim:TipState")
        self.time_scale = ca_rw(float, prefix + "Sim:TimeScale")
        self.fault = ca_rw(str, prefix + "Sim:Fault")
        self.seed = epics_signal_r(int, prefix + "Sim:Seed")
        self.degrade = Command(prefix + "Sim:Degrade", TIP_ACTION_TIMEOUT)
        super().__init__(name=name)


class STM(Device):
    """The scanning tunnelling microscope behind the PV contract, under ``prefix``.

    ``sim=True`` adds the :class:`SimControls` part for the digital twin; leave it out on a
    real controller. Connect as any ophyd-async device, e.g. ``await stm.connect()`` or
    ``await stm.connect(mock=True)`` for unit tests.
    """

    def __init__(self, prefix: str = DEFAULT_PREFIX, name: str = "", sim: bool = True) -> None:
        self.prefix = prefix
        self.status = Status(prefix)
        self.scan = ScanDetector(prefix)
        self.tip = Tip(prefix)
        self.coarse = Coarse(prefix, self.status.contact, self.status.area_index)
        if sim:
            self.sim = SimControls(prefix)
        super().__init__(name=name)

    @property
    def simulated(self) -> bool:
        """True when the device has the twin's ``sim`` part."""
        return hasattr(self, "sim")
