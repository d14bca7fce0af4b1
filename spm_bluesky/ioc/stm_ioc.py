"""caproto soft IOC that serves the STM PV contract from the digital twin or a Nanonis.

The contract, every PV with its type, units, limits and meaning, is docs/reference/pv-table.md.

Start it with ``spm-ioc --prefix STM: --seed 0`` (or ``python -m spm_bluesky.ioc``); it binds
127.0.0.1 by default and prints one ready line. ``spm-ioc --list-pvs`` prints the PV table
(the same table as docs/reference/pv-table.md). ``spm-ioc --backend nanonis --nanonis
HOST:PORT`` serves the same PVs, without ``Sim:*``, from a Nanonis controller
(:mod:`spm_bluesky.ioc.nanonis_backend`); with ``--truth HOST:PORT`` (the Nanonis
simulator's truth channel) the ``Sim:*`` PVs are back, fed from there.

How it behaves:

- Every writable PV has limits; a put outside them, or one that breaks a rule between
  PVs (a frame reaching outside the piezo range, an imaging bias under 19 mV), fails with
  a CA error, leaves the value unchanged, and the IOC keeps serving. A setting or command
  the instrument refuses fails its put too, with the instrument's message in the log.
- Command PVs (put 1) run one at a time, in order, and complete their put-callback when
  the action has finished; they read back 0. ``Scan:Abort`` cancels the running and the
  queued commands (their puts fail) and completes once they have stopped.
- The backend (:mod:`spm_bluesky.ioc.backend`) carries the commands out; the scalar state
  is mirrored into the ``Status:*``, counter and ``Sim:*`` PVs after each command.
- ``Sim:TimeScale`` paces commands: with the twin each waits ``simulated seconds x
  TimeScale`` after the twin call returns (an aborted command has already advanced the
  twin's clock); the Nanonis simulator paces itself and is told the value.
- A Nanonis that cannot be reached disconnects every PV until it answers again
  (:mod:`spm_bluesky.ioc.supervise`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any, TypeVar

import numpy as np
from caproto import ChannelType
from caproto.server import PVGroup, pvproperty

from spm_bluesky.domain import limits
from spm_bluesky.domain.actions import ACTIONS, ActionKind
from spm_bluesky.domain.limits import DEFAULT_PREFIX
from spm_bluesky.ioc import supervise
from spm_bluesky.ioc.backend import Backend, BackendError, ControllerLost, Outcome, SimControl
from spm_bluesky.ioc.ca_server import QuietCaprotoFilter, configure_environment, serve
from spm_bluesky.ioc.nanonis_backend import (
    Z_SIGNAL,
    NanonisBackend,
    NanonisConfig,
    parse_address,
)
from spm_bluesky.ioc.pvtable import markdown_table, pv_rows
from spm_bluesky.ioc.twin_backend import TwinBackend
from spm_bluesky.twin import Fault, Frame, TipClass

T = TypeVar("T")

DEFAULT_HOST = "127.0.0.1"
#: Largest image (elements) that ``Scan:Image`` can hold.
MAX_IMAGE_LENGTH = int(limits.SCAN_PIXELS.high) ** 2

_FRAME = Frame()  # the twin's default frame gives the start-up scan settings
_PULSE = next(a for a in ACTIONS if a.kind is ActionKind.PULSE)
_DIP = next(a for a in ACTIONS if a.kind is ActionKind.DIP)


class CommandAborted(RuntimeError):
    """A command was stopped by ``Scan:Abort`` before it finished."""


def _precision(units: str, dtype: type) -> dict[str, int]:
    """Display precision (digits after the point): metres and amperes need many."""
    if dtype is not float:
        return {}
    return {"precision": 12 if units in ("m", "A", "m/s", "m^2") else 4}


def _setting(name: str, limit: limits.Range, value: float, doc: str,
             dtype: type = float) -> pvproperty:
    """A writable parameter whose CA control limits are the instrument limits."""
    return pvproperty(name=name, value=dtype(value), dtype=dtype, doc=doc, units=limit.unit,
                      lower_ctrl_limit=dtype(limit.low), upper_ctrl_limit=dtype(limit.high),
                      **_precision(limit.unit, dtype))


def _command(name: str, doc: str) -> pvproperty:
    """A command PV: put 1 to act (0 does nothing); the put completes when done."""
    return pvproperty(name=name, value=0, dtype=int, doc=doc,
                      lower_ctrl_limit=0, upper_ctrl_limit=1)


def _readback(name: str, doc: str, value: Any = 0.0, units: str = "",
              dtype: type = float) -> pvproperty:
    """A read-only PV the IOC updates itself."""
    return pvproperty(name=name, value=dtype(value), dtype=dtype, doc=doc, units=units,
                      read_only=True, **_precision(units, dtype))


class StmIOC(PVGroup):
    """The instrument's PVs: scan, tip conditioning, coarse motion and status."""

    # -- scan ---------------------------------------------------------------------------
    center_x = _setting("Scan:CenterX", limits.SCAN_CENTER, _FRAME.center_x,
                        "Frame centre x in the approach area; the frame must stay inside "
                        "the usable piezo range")
    center_y = _setting("Scan:CenterY", limits.SCAN_CENTER, _FRAME.center_y,
                        "Frame centre y in the approach area; the frame must stay inside "
                        "the usable piezo range")
    size = _setting("Scan:Size", limits.SCAN_SIZE, _FRAME.size,
                    "Frame edge length; the frame must stay inside the usable piezo range")
    pixels = _setting("Scan:Pixels", limits.SCAN_PIXELS, _FRAME.pixels,
                      "Pixels per line and lines per frame", dtype=int)
    speed = _setting("Scan:Speed", limits.SCAN_SPEED, _FRAME.speed, "Tip speed while scanning")
    bias = _setting("Scan:Bias", limits.SCAN_BIAS, _FRAME.bias,
                    f"Imaging bias; its magnitude must be at least "
                    f"{limits.MIN_BIAS_MAGNITUDE:g} V")
    setpoint = _setting("Scan:Setpoint", limits.SCAN_SETPOINT, _FRAME.setpoint,
                        "Tunnelling current setpoint")
    frame_time = _readback("Scan:FrameTime", "Time one frame takes with the present settings",
                           _FRAME.duration, "s")
    acquire = _command("Scan:Acquire", "Put 1: scan one frame; completes when the frame is "
                                       "done and Scan:Image holds it")
    abort = _command("Scan:Abort", "Put 1: stop the running and queued commands (their puts "
                                   "fail); completes when they have stopped")
    image = pvproperty(name="Scan:Image", dtype=ChannelType.FLOAT, max_length=MAX_IMAGE_LENGTH,
                       value=np.zeros(_FRAME.pixels**2, np.float32), read_only=True, units="m",
                       max_subscription_backlog=4,
                       doc="Last frame: heights, row-major, Pixels x Pixels, row 0 scanned first")
    frame_counter = _readback("Scan:FrameCounter",
                              "Frames acquired; increments after Scan:Image holds a new frame",
                              0, dtype=int)

    # -- tip conditioning ---------------------------------------------------------------
    action_x = _setting("Tip:ActionX", limits.ACTION_POSITION, 0.0,
                        "x of the next conditioning action in the approach area")
    action_y = _setting("Tip:ActionY", limits.ACTION_POSITION, 0.0,
                        "y of the next conditioning action in the approach area")
    pulse_bias = _setting("Tip:PulseBias", limits.PULSE_BIAS, _PULSE.bias, "Bias pulse voltage")
    pulse_time = _setting("Tip:PulseTime", limits.PULSE_TIME, _PULSE.duration,
                          "Bias pulse duration")
    dip_depth = _setting("Tip:DipDepth", limits.DIP_DEPTH, _DIP.depth,
                         "How far a dip pushes the tip toward the sample")
    pulse = _command("Tip:Pulse", "Put 1: apply a bias pulse at Tip:ActionX/Y; needs contact")
    dip = _command("Tip:Dip", "Put 1: dip the tip at Tip:ActionX/Y; needs contact; may crash")
    action_counter = _readback("Tip:ActionCounter", "Conditioning actions done so far",
                               0, dtype=int)

    # -- coarse motion ------------------------------------------------------------------
    approach = _command("Coarse:Approach", "Put 1: approach into tunnelling range and let the "
                                           "piezo settle; recovers from a crash")
    withdraw = _command("Coarse:Withdraw", "Put 1: retract the tip out of tunnelling range")
    move_area = _command("Coarse:MoveArea", "Put 1: withdraw, coarse-step to a fresh approach "
                                            "area, re-approach")
    area_index = _readback("Coarse:AreaIndex", "Approach area the tip is over", 0, dtype=int)

    # -- status -------------------------------------------------------------------------
    contact = _readback("Status:Contact", "1 while in tunnelling range", 0, dtype=int)
    crashed = _readback("Status:Crashed", "1 after a crash until the next approach", 0,
                        dtype=int)
    crash_count = _readback("Status:CrashCount", "Crashes so far", 0, dtype=int)
    xy_range = _readback("Status:Range", "Piezo xy range (edge of the approach area)",
                         limits.APPROACH_AREA_SIZE, "m")
    z = _readback("Status:Z", "z piezo extension", 0.0, "m")
    current = _readback("Status:Current", "Tunnelling current: the setpoint while the z "
                                          "feedback holds it, 0 out of tunnelling range "
                                          "(Current.Get on a Nanonis)", 0.0, "A")
    z_range = _readback("Status:ZRange", "z piezo range", limits.Z_RANGE, "m")
    clock = _readback("Status:Clock", "Instrument time (simulated seconds in the twin)",
                      0.0, "s")
    busy = _readback("Status:Busy", "1 while a command runs or waits to run", 0, dtype=int)


    def __init__(self, prefix: str, backend: Backend, **kwargs: Any) -> None:
        super().__init__(prefix, **kwargs)
        self.backend = backend
        self._lock = asyncio.Lock()  # commands run one at a time, first come first served
        self._not_stalled = asyncio.Event()
        self._not_stalled.set()
        self._commands: set[asyncio.Task] = set()

    async def start(self, time_scale: float) -> None:
        """Publish the instrument's initial state (before serving)."""
        await self._mirror(await self.backend.state())

    async def refresh(self) -> None:
        """Read the instrument's state into the PVs unless a command runs (status polling)."""
        if not self._lock.locked() and self._not_stalled.is_set():
            async with self._lock:
                await self._mirror(await self.backend.state())

    # -- commands -----------------------------------------------------------------------

    async def _run(self, name: str, operation: Callable[[], Awaitable[Outcome[T]]],
                   finish: Callable[[T], Awaitable[None]] | None = None) -> None:
        """Run one command to its end; raise :class:`CommandAborted` if aborted.

        The work runs in its own task so that ``Scan:Abort`` can cancel it without
        cancelling caproto's write handler (which must still answer the put).
        """
        work = asyncio.create_task(self._command(operation, finish), name=name)
        self._commands.add(work)
        try:
            await work
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():  # the server is shutting down
                work.cancel()
                raise
            raise CommandAborted(f"{self.prefix}{name} aborted by {self.abort.pvname}") from None
        finally:
            self._commands.discard(work)

    def _paces(self) -> bool:
        return self.backend.sim is not None and self.backend.sim.paces_in_ioc

    async def _command(self, operation: Callable[[], Awaitable[Outcome[T]]],
                       finish: Callable[[T], Awaitable[None]] | None) -> None:
        await self.busy.write(1)
        try:
            async with self._lock:
                outcome: Outcome[T] | None = None
                try:
                    await self._not_stalled.wait()
                    outcome = await operation()
                    scale = self._time_scale()
                    if self._paces() and scale > 0:
                        await asyncio.sleep(outcome.elapsed * scale)
                    if finish is not None:
                        await finish(outcome.result)
                finally:
                    with contextlib.suppress(BackendError, ControllerLost):
                        await self._mirror(outcome if outcome else await self.backend.state())
        finally:
            if not self._commands - {asyncio.current_task()}:
                await self.busy.write(0)

    def _time_scale(self) -> float:
        """The pacing the IOC applies (``Sim:TimeScale``; none without a simulation)."""
        return 0.0

    async def _mirror(self, outcome: Outcome[Any]) -> None:
        """Copy the instrument's scalar state into the PVs that changed."""
        state = outcome.state
        values = ((self.clock, state.clock), (self.area_index, state.area_index),
                  (self.contact, int(state.contact)), (self.crashed, int(state.crashed)),
                  (self.crash_count, state.crash_count),
                  (self.action_counter, state.action_count), (self.z, state.z),
                  (self.current, state.current))
        for pv, value in values:
            if pv.value != value:
                await pv.write(value)

    async def _publish_image(self, image: np.ndarray) -> None:
        await self.image.write(image.ravel())
        await self.frame_counter.write(self.frame_counter.value + 1)

    def _frame(self) -> Frame:
        return Frame(center_x=self.center_x.value, center_y=self.center_y.value,
                     size=self.size.value, pixels=self.pixels.value, speed=self.speed.value,
                     bias=self.bias.value, setpoint=self.setpoint.value)

    @acquire.putter
    async def acquire(self, instance, value: int) -> int:
        if value:
            frame = self._frame()
            await self._run("Scan:Acquire", lambda: self.backend.scan(frame),
                            self._publish_image)
        return 0

    @abort.putter
    async def abort(self, instance, value: int) -> int:
        if value and self._commands:
            running = list(self._commands)
            for task in running:
                task.cancel()
            await asyncio.wait(running)
        return 0

    @pulse.putter
    async def pulse(self, instance, value: int) -> int:
        if value:
            x, y = self.action_x.value, self.action_y.value
            bias, duration = self.pulse_bias.value, self.pulse_time.value
            await self._run("Tip:Pulse", lambda: self.backend.pulse(x, y, bias, duration))
        return 0

    @dip.putter
    async def dip(self, instance, value: int) -> int:
        if value:
            x, y, depth = self.action_x.value, self.action_y.value, self.dip_depth.value
            await self._run("Tip:Dip", lambda: self.backend.dip(x, y, depth))
        return 0

    @approach.putter
    async def approach(self, instance, value: int) -> int:
        if value:
            await self._run("Coarse:Approach", self.backend.approach)
        return 0

    @withdraw.putter
    async def withdraw(self, instance, value: int) -> int:
        if value:
            await self._run("Coarse:Withdraw", self.backend.withdraw)
        return 0

    @move_area.putter
    async def move_area(self, instance, value: int) -> int:
        if value:
            await self._run("Coarse:MoveArea", self.backend.move_area)
        return 0

    # -- settings with rules between PVs --------------------------------------------------

    async def _configure(self, **change: Any) -> Frame:
        """The frame with ``change`` applied, given to the instrument; ValueError (put
        refused) if it breaks a limit, BackendError if the instrument refuses it."""
        frame = replace(self._frame(), **change)
        limits.check_frame(frame.center_x, frame.center_y, frame.size, frame.pixels)
        await self.backend.configure(frame)
        return frame

    @center_x.putter
    async def center_x(self, instance, value: float) -> None:
        await self._configure(center_x=float(value))

    @center_y.putter
    async def center_y(self, instance, value: float) -> None:
        await self._configure(center_y=float(value))

    @size.putter
    async def size(self, instance, value: float) -> None:
        await self.frame_time.write((await self._configure(size=float(value))).duration)

    @pixels.putter
    async def pixels(self, instance, value: int) -> None:
        await self.frame_time.write((await self._configure(pixels=int(value))).duration)

    @speed.putter
    async def speed(self, instance, value: float) -> None:
        await self.frame_time.write((await self._configure(speed=float(value))).duration)

    @bias.putter
    async def bias(self, instance, value: float) -> None:
        limits.check_bias(float(value))
        await self._configure(bias=float(value))

    @setpoint.putter
    async def setpoint(self, instance, value: float) -> None:
        await self._configure(setpoint=float(value))
        with contextlib.suppress(BackendError, ControllerLost):  # the setpoint is applied
            await self.refresh()  # the current follows the setpoint


class SimStmIOC(StmIOC):
    """The instrument's PVs and the simulation's (``Sim:*``): the twin, or the Nanonis
    simulator with its truth channel."""

    tip_state = pvproperty(name="Sim:TipState", dtype=ChannelType.ENUM, read_only=True,
                           enum_strings=[c.value for c in TipClass], value=TipClass.GOOD.value,
                           doc="TRUE tip class (twin only): for evaluation and labels, never "
                               "for decisions")
    time_scale = _setting("Sim:TimeScale", limits.TIME_SCALE, 0.0,
                          "Pacing: 0 as fast as possible, 1 real time (simulated s per s)")
    fault = pvproperty(name="Sim:Fault", dtype=ChannelType.ENUM,
                       enum_strings=[f.value for f in Fault], value=Fault.NONE.value,
                       doc="Inject a fault: lose_contact and crash act at once; stall makes "
                           "commands hang until Scan:Abort or Fault is set back to none")
    degrade = _command("Sim:Degrade", "Put 1: degrade the tip on purpose (DeepSPM training "
                                      "mode)")
    seed = _readback("Sim:Seed", "Seed of the twin", 0, dtype=int)
    damage_area = _readback("Sim:DamageArea",
                            "Sample area damaged by conditioning actions and crashes", 0.0, "m^2")

    def __init__(self, prefix: str, backend: Backend, **kwargs: Any) -> None:
        if backend.sim is None:
            raise ValueError(f"{backend.name} simulates nothing: serve it with StmIOC")
        super().__init__(prefix, backend, **kwargs)
        self.sim: SimControl = backend.sim

    async def start(self, time_scale: float) -> None:
        """Publish the seed, the time scale and the initial state (before serving)."""
        await self.seed.write(await self.sim.seed())
        await self.time_scale.write(time_scale)
        await self.sim.set_time_scale(time_scale)
        await super().start(time_scale)

    def _time_scale(self) -> float:
        return float(self.time_scale.value)

    async def _mirror(self, outcome: Outcome[Any]) -> None:
        await super()._mirror(outcome)
        if outcome.truth is not None:
            for pv, value in ((self.tip_state, outcome.truth.tip_class.value),
                              (self.damage_area, outcome.truth.damage_area)):
                if pv.value != value:
                    await pv.write(value)

    @time_scale.putter
    async def time_scale(self, instance, value: float) -> None:
        await self.sim.set_time_scale(float(value))

    @degrade.putter
    async def degrade(self, instance, value: int) -> int:
        if value:
            await self._run("Sim:Degrade", self.sim.degrade)
        return 0

    @fault.putter
    async def fault(self, instance, value: str) -> None:
        fault = Fault(value)
        outcome = await self.sim.inject_fault(fault)
        if fault is Fault.STALL:
            self._not_stalled.clear()
        else:
            self._not_stalled.set()
        await self._mirror(outcome)


def _ip_address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an IP address: {text!r}") from None


def _time_scale(text: str) -> float:
    value = float(text)
    if not limits.TIME_SCALE.contains(value):
        raise argparse.ArgumentTypeError(
            f"must be within {limits.TIME_SCALE.low:g} to {limits.TIME_SCALE.high:g}")
    return value


def _address(text: str) -> tuple[str, int]:
    try:
        return parse_address(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spm-ioc", description="caproto soft IOC serving the STM PV contract from the "
                                    "digital twin or a Nanonis controller.")
    parser.add_argument("--prefix", default=DEFAULT_PREFIX, help="PV prefix (default: %(default)s)")
    parser.add_argument("--backend", choices=("twin", "nanonis"), default="twin",
                        help="what stands behind the PVs (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="twin seed (default: %(default)s)")
    parser.add_argument("--nanonis", type=_address, metavar="HOST:PORT",
                        help="the Nanonis TCP programming interface (--backend nanonis)")
    parser.add_argument("--truth", type=_address, metavar="HOST:PORT",
                        help="the Nanonis simulator's truth channel: serve Sim:* from it "
                             "(--backend nanonis)")
    parser.add_argument("--signal-indexes", choices=sorted(Z_SIGNAL), default="rt",
                        help="the controller's signal indexing: 'rt' (newer releases, Z is "
                             "30) or 'slots' (older releases, Z is 14) (default: %(default)s)")
    parser.add_argument("--host", default=DEFAULT_HOST, type=_ip_address,
                        help="IP address of the interface to serve on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=None,
                        help="CA server port (default: $EPICS_CA_SERVER_PORT or 5064)")
    parser.add_argument("--time-scale", type=_time_scale, default=0.0,
                        help="initial Sim:TimeScale: 0 as fast as possible, 1 real time")
    parser.add_argument("--log-level", default="WARNING", help="logging level (default: "
                                                               "%(default)s)")
    parser.add_argument("--list-pvs", action="store_true",
                        help="print the PV table (Markdown) and exit")
    return parser


def pv_table(prefix: str = DEFAULT_PREFIX) -> str:
    """The Markdown PV table of a twin IOC with ``prefix`` (``--list-pvs`` and the docs)."""
    return markdown_table(pv_rows(SimStmIOC(prefix, TwinBackend(0))))


def make_backend(args: argparse.Namespace) -> Backend:
    """The backend the command line asks for."""
    if args.backend == "twin":
        return TwinBackend(args.seed)
    host, port = args.nanonis
    return NanonisBackend(NanonisConfig(host, port, z_signal=Z_SIGNAL[args.signal_indexes],
                                        truth=args.truth))


async def _run_ioc(args: argparse.Namespace) -> None:
    backend = make_backend(args)
    ioc = StmIOC(args.prefix, backend) if backend.sim is None else SimStmIOC(args.prefix,
                                                                             backend)

    def ready(port: int) -> None:
        print(f"spm-ioc ready prefix={args.prefix} host={args.host} port={port} "
              f"pvs={len(ioc.pvdb)} backend={backend.name}", flush=True)

    try:
        await supervise.connect(ioc)
        await ioc.start(args.time_scale)
        if isinstance(backend, TwinBackend):
            await serve(ioc.pvdb, args.host, ready)
        else:
            await supervise.serve_supervised(ioc, args.host, ready)
    finally:
        backend.close()


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point ``spm-ioc``."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.list_pvs:
        print(pv_table(args.prefix))
        return
    if (args.backend == "nanonis") != (args.nanonis is not None):
        parser.error("--nanonis HOST:PORT goes with --backend nanonis, and only with it")
    if args.truth is not None and args.backend != "nanonis":
        parser.error("--truth goes with --backend nanonis")
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(QuietCaprotoFilter())
    logging.basicConfig(level=args.log_level.upper(), handlers=[handler],
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    configure_environment(args.host, args.port)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_run_ioc(args))


if __name__ == "__main__":
    main()
