"""The IOC's Nanonis backend: the PV contract carried out by a Nanonis controller over its
TCP programming interface (:mod:`spm_bluesky.nanonis.client`), or by its simulator.

How PVs and commands map to Nanonis commands:

- ``Scan:CenterX/CenterY/Size`` -> ``Scan.FrameSet`` (square, unrotated); ``Scan:Pixels`` ->
  ``Scan.BufferSet`` (the Z signal only, pixels = lines; a Nanonis keeps pixels a multiple
  of 16, so another count is refused); ``Scan:Speed`` -> ``Scan.SpeedSet`` (linear speed
  kept, backward = forward); ``Scan:Bias`` -> ``Bias.Set``; ``Scan:Setpoint`` ->
  ``ZCtrl.SetpntSet``. Each is sent when its PV is put (only what changed), so a refusal is
  a refused put.
- ``Scan:Acquire`` -> ``Scan.Action`` (start, up), ``Scan.WaitEndOfScan`` (1 s),
  ``Scan.FrameDataGrab`` (Z, forward) and the status reads, sent together (one round trip);
  a frame not done within the wait is waited for on, then grabbed again. Rows of a downward
  frame are reversed so that row 0 is the first line scanned. ``Scan:Abort`` stops a scan
  with ``Scan.Action`` (stop).
- ``Tip:Pulse`` -> ``FolMe.XYPosSet`` then ``Bias.Pulse`` (absolute bias, z held);
  ``Tip:Dip`` -> ``FolMe.XYPosSet``, ``TipShaper.PropsSet`` (lift = minus the depth, when
  it changed) and ``TipShaper.Start``.
- ``Coarse:Approach`` -> ``AutoApproach.Open`` and ``OnOffSet`` (on), then ``OnOffGet``
  until it stops; ``Coarse:Withdraw`` -> ``ZCtrl.Withdraw``; ``Coarse:MoveArea`` ->
  withdraw, ``Motor.StartMove`` (:attr:`NanonisConfig.coarse_steps` in
  :attr:`NanonisConfig.coarse_direction`), approach.
- ``Status:Contact`` <- ``ZCtrl.OnOffGet``; ``Status:Z`` <- ``ZCtrl.ZPosGet``;
  ``Status:Current`` <- ``Current.Get``: the three sent together, with a frame's grab or on
  the second connection after every other command and at each status poll.

What the protocol cannot tell is kept by the IOC: ``Tip:ActionCounter`` (pulses and dips
done), ``Coarse:AreaIndex`` (area moves done), ``Status:Crashed`` (the z-controller was off
after a pulse or a dip: the feedback tripped; cleared by an approach) and
``Status:CrashCount``. ``Status:Clock`` is seconds since the IOC started, or the
simulator's simulated clock when a truth channel is given.

With a truth channel (the simulator's side channel, :mod:`spm_bluesky.nanonis.truth`) the
backend also offers the ``Sim:*`` controls; the truth is read from there, never from the
protocol. A refused command raises :class:`~spm_bluesky.ioc.backend.BackendError` with the
controller's text; a dropped or silent controller raises
:class:`~spm_bluesky.ioc.backend.ControllerLost` and sets :meth:`NanonisBackend.wait_lost`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import numpy as np

from spm_bluesky.ioc.backend import (
    BackendError,
    ControllerLost,
    InstrumentState,
    Outcome,
    SimControl,
    Truth,
)
from spm_bluesky.nanonis import commands as cmd
from spm_bluesky.nanonis.client import ControllerStatus, NanonisClient, ScanBuffer, ScanFrame
from spm_bluesky.nanonis.commands import TipShaperProps
from spm_bluesky.nanonis.protocol import NanonisError
from spm_bluesky.nanonis.truth import TruthClient
from spm_bluesky.twin import Fault, Frame, TipClass

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Index of the "Z (m)" signal, by the indexing a release uses (the document's two editions:
#: the 24 signal slots in older releases, the 128 real-time signals in newer ones).
Z_SIGNAL = {"rt": 30, "slots": 14}
#: Pixels per line a Nanonis accepts are a multiple of this.
PIXEL_MULTIPLE = 16
#: Milliseconds one ``Scan.WaitEndOfScan`` waits before it is asked again.
SCAN_WAIT_MS = 1000


@dataclass(frozen=True)
class NanonisConfig:
    """Where the controller is and how the IOC drives it."""

    host: str
    port: int
    #: Index of the Z signal in ``Scan.BufferSet`` and ``Scan.FrameDataGrab``.
    z_signal: int = Z_SIGNAL["rt"]
    #: The simulator's truth channel (host, port), or None for a real controller.
    truth: tuple[str, int] | None = None
    #: Seconds one command may take before the controller is taken as lost.
    timeout: float = 10.0
    #: Coarse steps to a fresh approach area, and their direction.
    coarse_steps: int = 100
    coarse_direction: cmd.MotorDirection = cmd.MotorDirection.X_PLUS
    #: Seconds between ``AutoApproach.OnOffGet`` polls.
    approach_poll: float = 0.01


def _parse_address(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{what} must be HOST:PORT, not {text!r}")
    return host, int(port)


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` as (host, port); ValueError if it is not one."""
    return _parse_address(text, "the address")


class NanonisBackend:
    """:class:`~spm_bluesky.ioc.backend.Backend` over one connection to a Nanonis."""

    def __init__(self, config: NanonisConfig) -> None:
        self.config = config
        self.name = f"nanonis {config.host}:{config.port}"
        self._client = NanonisClient(config.host, config.port, config.timeout)
        # A second connection reads the status while the first does (two of the four).
        self._status = NanonisClient(config.host, config.port, config.timeout)
        self._truth = None if config.truth is None else TruthClient(*config.truth,
                                                                     timeout=config.timeout)
        self.sim: SimControl | None = None if self._truth is None else _TruthSim(self,
                                                                                 self._truth)
        self._lost = asyncio.Event()
        self._frame = Frame()  # the settings of record (the IOC's PVs)
        self._sent: Frame | None = None  # what the controller holds, None when unknown
        self._dip_depth: float | None = None  # the tip shaper's lift, None when unknown
        self._started = time.monotonic()
        self._contact = False
        self._area_index = 0
        self._action_count = 0
        self._crashed = False
        self._crash_count = 0
        self._background: set[asyncio.Task[Any]] = set()

    # -- the connection -------------------------------------------------------------------

    async def _do(self, operation: Awaitable[T]) -> T:
        """Await a controller call: NanonisError -> BackendError, a lost link ->
        ControllerLost (and :meth:`wait_lost` returns)."""
        try:
            return await operation
        except NanonisError as error:
            raise BackendError(str(error)) from None
        except ValueError as error:  # refused by the truth channel
            raise BackendError(str(error)) from None
        except ConnectionError as error:
            self._lost.set()
            raise ControllerLost(str(error)) from None

    async def connect(self) -> None:
        """Connect and give the controller the IOC's settings; ControllerLost if it does
        not answer. Settings it refuses are logged (the PVs keep them)."""
        self._sent, self._dip_depth = None, None
        await self._do(self._client.connect())
        await self._do(self._status.connect())
        if isinstance(self.sim, _TruthSim):
            await self.sim.resend()
        try:
            await self._send(self._frame)
        except BackendError as error:
            log.warning("the controller refused the IOC's scan settings: %s", error)
        self._lost.clear()

    async def wait_lost(self) -> None:
        """Return once a call has found the controller unreachable."""
        await self._lost.wait()

    def close(self) -> None:
        """Drop the connections (the controller keeps its state)."""
        for task in self._background:
            task.cancel()
        self._client.abandon()
        self._status.abandon()

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _quietly(self, operation: Awaitable[Any]) -> None:
        try:
            await self._do(operation)
        except (BackendError, ControllerLost) as error:
            log.warning("%s", error)

    # -- state ----------------------------------------------------------------------------

    async def _read_truth(self) -> dict[str, Any] | None:
        return None if self._truth is None else await self._do(self._truth.request())

    def _state_of(self, truth: dict[str, Any] | None, z: float,
                  current: float) -> InstrumentState:
        clock = float(truth["clock"]) if truth else time.monotonic() - self._started
        return InstrumentState(clock=clock, area_index=self._area_index,
                               contact=self._contact, crashed=self._crashed,
                               crash_count=self._crash_count,
                               action_count=self._action_count, z=z, current=current)

    @staticmethod
    def _truth_of(truth: dict[str, Any] | None) -> Truth | None:
        if truth is None:
            return None
        return Truth(TipClass(truth["tip_class"]), float(truth["damage_area"]))

    async def _outcome(self, result: T, status: ControllerStatus | None = None) -> Outcome[T]:
        """``result`` with the state: ``status`` if read already, else the z-controller, z
        and current read now in one round trip (the truth meanwhile)."""
        if status is None:
            status, truth = await asyncio.gather(self._do(self._status.status()),
                                                 self._read_truth())
        else:
            truth = await self._read_truth()
        self._contact = status.feedback_on
        return Outcome(result, self._state_of(truth, status.z, status.current),
                       self._truth_of(truth))

    async def state(self) -> Outcome[None]:
        return await self._outcome(None)

    # -- settings -------------------------------------------------------------------------

    async def configure(self, frame: Frame) -> None:
        """Send what changed in ``frame``; the settings of record stay unless refused."""
        await self._send(frame)
        self._frame = frame

    async def _send(self, frame: Frame) -> None:
        """Send the settings of ``frame`` the controller does not hold (all when unknown)."""
        client = self._client
        full = self._sent is None
        sent = self._sent or frame
        self._sent = None  # unknown until every change is through (a refusal: send all again)
        if full or frame.pixels != sent.pixels:
            await self._buffer(frame.pixels)
        if full or (frame.center_x, frame.center_y, frame.size) != (
                sent.center_x, sent.center_y, sent.size):
            await self._do(client.frame_set(ScanFrame(frame.center_x, frame.center_y,
                                                      frame.size, frame.size)))
        if full or frame.speed != sent.speed:
            await self._do(client.speed_set(frame.speed))
        if full or frame.bias != sent.bias:
            await self._do(client.bias_set(frame.bias))
        if full or frame.setpoint != sent.setpoint:
            await self._do(client.setpoint_set(frame.setpoint))
        self._sent = frame

    async def _buffer(self, pixels: int) -> None:
        if pixels % PIXEL_MULTIPLE:
            raise BackendError(f"Scan.BufferSet: a Nanonis keeps pixels per line a multiple "
                               f"of {PIXEL_MULTIPLE}; {pixels} is not")
        z = self.config.z_signal
        await self._do(self._client.buffer_set(ScanBuffer((z,), pixels, pixels)))
        buffer = await self._do(self._client.buffer_get())
        if (buffer.pixels, buffer.lines) != (pixels, pixels) or z not in buffer.channels:
            raise BackendError(f"Scan.BufferSet: the controller holds {buffer.pixels} pixels, "
                               f"{buffer.lines} lines, signals {list(buffer.channels)}; "
                               f"asked for {pixels}, {pixels}, [{z}]")

    # -- commands -------------------------------------------------------------------------

    async def scan(self, frame: Frame) -> Outcome[np.ndarray]:
        client, channel = self._client, self.config.z_signal
        await self.configure(frame)
        try:
            acquired = await self._do(client.acquire(channel, SCAN_WAIT_MS))
            if acquired is None:  # a frame longer than one wait: wait on, then grab it
                while not await self._do(client.wait_end_of_scan(SCAN_WAIT_MS)):
                    pass
                acquired = await self._do(client.grab_with_status(channel))
        except asyncio.CancelledError:  # Scan:Abort
            self._spawn(self._quietly(client.scan_action(cmd.ScanAction.STOP)))
            raise
        grabbed, status = acquired
        data = grabbed.data if grabbed.scan_up else grabbed.data[::-1]
        if data.shape != (frame.pixels, frame.pixels):
            raise BackendError(f"Scan.FrameDataGrab: a frame of {data.shape}, expected "
                               f"{frame.pixels} x {frame.pixels}")
        return await self._outcome(np.ascontiguousarray(data, np.float32), status)

    async def _action(self, operation: Awaitable[Any]) -> Outcome[None]:
        """A pulse or a dip: counted once done; the feedback off afterwards is a crash."""
        await self._do(operation)
        self._action_count += 1
        outcome = await self._outcome(None)
        if not outcome.state.contact and not self._crashed:
            self._crashed = True
            self._crash_count += 1
            outcome = replace(outcome, state=replace(outcome.state, crashed=True,
                                                     crash_count=self._crash_count))
        return outcome

    async def pulse(self, x: float, y: float, bias: float, duration: float) -> Outcome[None]:
        await self._do(self._client.xy_set(x, y))
        return await self._action(self._client.bias_pulse(duration, bias, z_hold=1,
                                                          relative=2))

    async def dip(self, x: float, y: float, depth: float) -> Outcome[None]:
        await self._do(self._client.xy_set(x, y))
        if depth != self._dip_depth:
            props = TipShaperProps(tip_lift=-depth, lift_height=depth)
            await self._do(self._client.tip_shaper_props_set(props))
            self._dip_depth = depth
        return await self._action(self._client.tip_shaper_start())

    async def approach(self) -> Outcome[None]:
        client = self._client
        await self._do(client.auto_approach_open())
        await self._do(client.auto_approach_set(True))
        try:
            while await self._do(client.auto_approach_running()):
                await asyncio.sleep(self.config.approach_poll)
        except asyncio.CancelledError:  # Scan:Abort
            self._spawn(self._quietly(client.auto_approach_set(False)))
            raise
        outcome = await self._outcome(None)
        if not outcome.state.contact:
            raise BackendError("AutoApproach ended without tunnelling contact (ZCtrl.OnOffGet "
                               "reads off)")
        self._crashed = False
        return replace(outcome, state=replace(outcome.state, crashed=False))

    async def withdraw(self) -> Outcome[None]:
        await self._do(self._client.withdraw())
        return await self._outcome(None)

    async def move_area(self) -> Outcome[None]:
        await self._do(self._client.withdraw())
        await self._do(self._client.motor_start_move(self.config.coarse_direction,
                                                      self.config.coarse_steps))
        self._area_index += 1
        return await self.approach()


class _TruthSim:
    """The ``Sim:*`` controls over the simulator's truth channel; it paces itself."""

    paces_in_ioc = False

    def __init__(self, backend: NanonisBackend, truth: TruthClient) -> None:
        self._backend = backend
        self._truth = truth
        self._time_scale: float | None = None

    async def resend(self) -> None:
        """Give a (restarted) simulator the time scale last set."""
        if self._time_scale is not None:
            await self.set_time_scale(self._time_scale)

    async def seed(self) -> int:
        return int((await self._backend._do(self._truth.request()))["seed"])

    async def set_time_scale(self, value: float) -> None:
        await self._backend._do(self._truth.request("time_scale", value=value))
        self._time_scale = value

    async def inject_fault(self, fault: Fault) -> Outcome[None]:
        answer = await self._backend._do(self._truth.request("fault", fault=fault.value))
        backend = self._backend
        if fault is Fault.CRASH and not backend._crashed:
            backend._crashed = True
            backend._crash_count += 1
        if fault is Fault.STALL:  # the controller answers nothing now: report what is known
            current = backend._frame.setpoint if answer["contact"] else 0.0
            return Outcome(None, backend._state_of(answer, float(answer["z"]), current),
                           backend._truth_of(answer))
        return await backend.state()

    async def degrade(self) -> Outcome[None]:
        await self._backend._do(self._truth.request("degrade"))
        return await self._backend.state()
