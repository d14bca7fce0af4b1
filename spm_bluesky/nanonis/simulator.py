"""A Nanonis controller simulator: the TCP programming interface over the digital twin.

``spm-nanonis-sim --port PORT --seed S`` (or ``python -m spm_bluesky.nanonis``) serves the
commands of :mod:`spm_bluesky.nanonis.commands` on 127.0.0.1 and prints one ready line.
It answers as a Nanonis controller does: a response with the return arguments and the error
section, an error response for an unknown command, a body that does not fit the command's
arguments or a value outside the instrument limits; it closes a connection whose header
cannot be read, and accepts at most four connections at a time (the document's limit).

The controller state a Nanonis holds (scan frame, buffer, speed, bias, setpoint, tip
position, tip-shaper settings) lives here; the twin (:class:`spm_bluesky.twin.Instrument`)
makes the images and carries the hidden tip. Twin calls run one at a time on one thread and
are paced like the IOC's: each takes ``simulated seconds x time scale`` of wall time.

A second port, the truth channel, speaks JSON lines and is no part of the protocol: it
reports the twin's true state (for evaluation only) and takes the twin-only controls
(faults, tip degradation, time scale).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import Any, TypeVar

import numpy as np

from spm_bluesky.domain import limits
from spm_bluesky.nanonis import commands as cmd
from spm_bluesky.nanonis.commands import TipShaperProps
from spm_bluesky.nanonis.protocol import (
    HEADER_SIZE,
    ErrorSection,
    ProtocolError,
    RequestHeader,
    response,
)
from spm_bluesky.twin import Fault, Frame, Instrument, InstrumentError

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_HOST = "127.0.0.1"
#: The first of the ports a Nanonis listens on by default.
DEFAULT_PORT = 6501
#: Connections a Nanonis accepts at once: "one, two, three or four" (the document).
MAX_CONNECTIONS = 4
#: Signals the simulator records, by index, for the two indexings the document names:
#: older releases index the 24 signal slots, newer ones the 128 real-time signals.
SIGNALS: dict[str, dict[int, str]] = {
    "slots": {0: "Current (A)", 14: "Z (m)"},
    "rt": {0: "Current (A)", 30: "Z (m)"},
}
#: Pixels per line are coerced to a multiple of this, as the document says the controller does.
PIXEL_MULTIPLE = 16


class Refused(ValueError):
    """A command the simulator will not carry out; its text goes into the error section."""


@dataclass
class Controller:
    """What a Nanonis holds besides the sample and the tip: the settings clients set."""

    center_x: float = 0.0
    center_y: float = 0.0
    width: float = Frame().size
    height: float = Frame().size
    angle: float = 0.0
    channels: tuple[int, ...] = ()
    pixels: int = Frame().pixels
    lines: int = Frame().pixels
    forward_speed: float = Frame().speed
    forward_line_time: float = Frame().size / Frame().speed
    keep_line_time: bool = False
    speed_ratio: float = 1.0
    bias: float = Frame().bias
    setpoint: float = Frame().setpoint
    x: float = 0.0
    y: float = 0.0
    tip_shaper: TipShaperProps = field(default_factory=TipShaperProps)

    def speeds(self, width: float | None = None) -> tuple[float, float, float, float]:
        """Forward and backward speed and time per line, for the present (or a new) width."""
        width = self.width if width is None else width
        forward = width / self.forward_line_time if self.keep_line_time else self.forward_speed
        backward = forward * self.speed_ratio
        return forward, backward, width / forward, width / backward

    def frame(self) -> Frame:
        """The twin frame of the present settings; :class:`Refused` if the twin cannot scan it."""
        if self.angle != 0.0:
            raise Refused(f"the simulator scans unrotated frames only (angle {self.angle} deg)")
        if not math.isclose(self.width, self.height, rel_tol=1e-6):
            raise Refused(f"the simulator scans square frames only (width {self.width} m, "
                          f"height {self.height} m)")
        if self.pixels != self.lines:
            raise Refused(f"the simulator scans square frames only ({self.pixels} pixels, "
                          f"{self.lines} lines)")
        forward, backward, _, _ = self.speeds()
        # The twin scans trace and retrace at one speed: the one that takes as long.
        speed = forward if backward == forward else 2 * forward * backward / (forward + backward)
        return Frame(center_x=self.center_x, center_y=self.center_y, size=self.width,
                     pixels=self.pixels, speed=speed, bias=self.bias, setpoint=self.setpoint)


class TwinThread:
    """Runs every call to the twin on one thread, in order (the twin is not thread-safe)."""

    def __init__(self, twin: Instrument) -> None:
        self.twin = twin
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="twin")

    async def call(self, operation: Callable[[Instrument], T]) -> tuple[T, float]:
        """Run ``operation(twin)``; return its result and the simulated seconds it took."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._timed, operation)

    def _timed(self, operation: Callable[[Instrument], T]) -> tuple[T, float]:
        before = self.twin.clock
        result = operation(self.twin)
        return result, self.twin.clock - before

    def close(self) -> None:
        """Stop the thread."""
        self._executor.shutdown(wait=False, cancel_futures=True)


def truth(twin: Instrument) -> dict[str, Any]:
    """The twin's true state (call on the twin's thread): for evaluation, never for control."""
    return {"seed": twin.seed, "clock": twin.clock, "tip_class": twin.tip_class.value,
            "area_index": twin.area_index, "contact": twin.contact, "crashed": twin.crashed,
            "crash_count": twin.crash_count, "action_count": twin.action_count,
            "frame_count": twin.frame_count, "z": twin.z, "damage_area": twin.damage_area,
            "fault": twin.fault.value}


def _coarse_step(twin: Instrument) -> float:
    """Move the coarse positioner to a fresh approach area, the tip withdrawn.

    The part of :meth:`Instrument.move_area` between its withdraw and its approach, so that
    ``ZCtrl.Withdraw``, ``Motor.StartMove`` and ``AutoApproach`` make the twin's move.
    """
    if twin.contact:
        raise Refused("the tip is in tunnelling range: withdraw it before a coarse move")
    elapsed = twin.config.instrument.coarse_move_time
    twin.clock += elapsed
    twin.area_index += 1
    return elapsed


class Simulator:
    """The controller: protocol handlers over a :class:`TwinThread`."""

    def __init__(self, twin: Instrument, *, time_scale: float = 0.0,
                 signals: str = "rt", max_connections: int = MAX_CONNECTIONS) -> None:
        self.state = Controller()
        self.signals = SIGNALS[signals]
        self.state.channels = tuple(self.signals)
        self.time_scale = time_scale
        self.max_connections = max_connections
        self._twin = TwinThread(twin)
        self._busy = asyncio.Lock()  # one instrument action at a time, as the IOC does
        self._not_stalled = asyncio.Event()
        self._not_stalled.set()
        self._clients: set[asyncio.StreamWriter] = set()
        self._image: np.ndarray | None = None
        self._scan: asyncio.Task[Any] | None = None
        self._scan_done = asyncio.Event()
        self._scan_started = False
        self._approach: asyncio.Task[Any] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._handlers: dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]] = {
            "Bias.Set": self._bias_set, "Bias.Get": self._bias_get,
            "Bias.Pulse": self._bias_pulse, "Current.Get": self._current_get,
            "ZCtrl.ZPosGet": self._z_get, "ZCtrl.OnOffGet": self._z_on_get,
            "ZCtrl.SetpntSet": self._setpoint_set, "ZCtrl.SetpntGet": self._setpoint_get,
            "ZCtrl.Withdraw": self._withdraw, "AutoApproach.Open": self._approach_open,
            "AutoApproach.OnOffSet": self._approach_set,
            "AutoApproach.OnOffGet": self._approach_get, "Scan.Action": self._scan_action,
            "Scan.StatusGet": self._scan_status, "Scan.WaitEndOfScan": self._wait_end_of_scan,
            "Scan.FrameSet": self._frame_set, "Scan.FrameGet": self._frame_get,
            "Scan.BufferSet": self._buffer_set, "Scan.BufferGet": self._buffer_get,
            "Scan.SpeedSet": self._speed_set, "Scan.SpeedGet": self._speed_get,
            "Scan.FrameDataGrab": self._frame_data_grab, "FolMe.XYPosSet": self._xy_set,
            "FolMe.XYPosGet": self._xy_get, "TipShaper.Start": self._tip_shaper_start,
            "TipShaper.PropsSet": self._tip_shaper_set,
            "TipShaper.PropsGet": self._tip_shaper_get, "Motor.StartMove": self._motor_move,
        }

    def close(self) -> None:
        """Stop the background work and the twin's thread."""
        for task in (*self._background, self._scan, self._approach):
            if task is not None:
                task.cancel()
        self._twin.close()

    # -- the protocol -------------------------------------------------------------------

    async def handle(self, name: str, body: bytes) -> bytes:
        """Carry out one request; return the whole response message."""
        command = cmd.COMMANDS.get(name)
        handler = self._handlers.get(name)
        if command is None or handler is None:
            return response(name, error=ErrorSection(True, f"unknown command {name!r}"))
        await self._not_stalled.wait()
        try:
            args = command.decode_args(body)
        except ProtocolError as error:
            return self._error(command, f"a body of {len(body)} bytes does not fit the "
                                        f"arguments of {name}: {error}")
        try:
            returns = await handler(args)
        except (Refused, InstrumentError, ValueError) as error:
            return self._error(command, str(error))
        except Exception as error:  # a simulator bug must not take the connection down
            log.exception("%s failed", name)
            return self._error(command, f"internal simulator error: {error!r}")
        return response(name, command.encode_returns(returns))

    @staticmethod
    def _error(command: cmd.Command, description: str) -> bytes:
        log.info("%s refused: %s", command.name, description)
        return response(command.name, command.encode_returns(command.default_returns()),
                        ErrorSection(True, description))

    async def serve_client(self, reader: asyncio.StreamReader,
                           writer: asyncio.StreamWriter) -> None:
        """One connection: read requests, answer them in order, until it closes."""
        peer = writer.get_extra_info("peername")
        if len(self._clients) >= self.max_connections:
            log.warning("refused a connection from %s: %d connections already open", peer,
                        self.max_connections)
            writer.close()
            return
        self._clients.add(writer)
        try:
            while True:
                head = await reader.readexactly(HEADER_SIZE)
                header = RequestHeader.unpack(head)
                body = await reader.readexactly(header.body_size)
                reply = await self.handle(header.command, body)
                if header.send_response:
                    writer.write(reply)
                    await writer.drain()
        except asyncio.IncompleteReadError as error:
            if error.partial:
                log.warning("%s closed in the middle of a message (%d bytes)", peer,
                            len(error.partial))
        except ProtocolError as error:
            log.warning("closing %s: %s", peer, error)
        except ConnectionError as error:
            log.info("%s: %s", peer, error)
        finally:
            self._clients.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    # -- running twin operations ----------------------------------------------------------

    async def _pace(self, elapsed: float) -> None:
        if self.time_scale > 0:
            await asyncio.sleep(elapsed * self.time_scale)

    async def _act(self, operation: Callable[[Instrument], T], wait: bool = True) -> T:
        """Run a twin operation under the instrument lock and pace it.

        With ``wait`` false the reply goes out once the twin has acted; the pacing goes on
        in the background and holds the lock, as a controller that is still moving.
        """
        await self._busy.acquire()
        try:
            result, elapsed = await self._twin.call(operation)
        except BaseException:
            self._busy.release()
            raise
        if wait:
            try:
                await self._pace(elapsed)
            finally:
                self._busy.release()
        else:
            self._spawn(self._pace(elapsed)).add_done_callback(self._release)
        return result

    def _release(self, _task: asyncio.Task[Any]) -> None:
        # A done-callback, not a ``finally``: it runs even if the task is cancelled early.
        self._busy.release()

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # -- bias, current, z ---------------------------------------------------------------

    async def _bias_set(self, args: dict[str, Any]) -> dict[str, Any]:
        limits.check_bias(args["bias"])
        self.state.bias = args["bias"]
        return {}

    async def _bias_get(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"bias": self.state.bias}

    async def _bias_pulse(self, args: dict[str, Any]) -> dict[str, Any]:
        bias = args["bias"] + (self.state.bias if args["relative"] == 1 else 0.0)
        x, y, width = self.state.x, self.state.y, args["width"]
        limits.PULSE_BIAS.check("pulse bias", bias)
        limits.PULSE_TIME.check("pulse width", width)
        await self._act(lambda twin: twin.pulse(x, y, bias, width),
                        wait=bool(args["wait_until_done"]))
        return {}

    async def _current_get(self, args: dict[str, Any]) -> dict[str, Any]:
        contact = await self._read(lambda twin: twin.contact)
        return {"current": self.state.setpoint if contact else 0.0}

    async def _z_get(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"z": await self._read(lambda twin: twin.z)}

    async def _z_on_get(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"on": int(await self._read(lambda twin: twin.contact))}

    async def _read(self, operation: Callable[[Instrument], T]) -> T:
        result, _ = await self._twin.call(operation)
        return result

    async def _setpoint_set(self, args: dict[str, Any]) -> dict[str, Any]:
        limits.SCAN_SETPOINT.check("setpoint", args["setpoint"])
        self.state.setpoint = args["setpoint"]
        return {}

    async def _setpoint_get(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"setpoint": self.state.setpoint}

    async def _withdraw(self, args: dict[str, Any]) -> dict[str, Any]:
        await self._act(Instrument.withdraw, wait=bool(args["wait"]))
        return {}

    # -- coarse motion ------------------------------------------------------------------

    async def _approach_open(self, args: dict[str, Any]) -> dict[str, Any]:
        return {}

    async def _approach_set(self, args: dict[str, Any]) -> dict[str, Any]:
        if args["on"]:
            if self._approach is None or self._approach.done():
                self._approach = self._spawn(self._act(Instrument.approach))
            await asyncio.sleep(0)  # let the approach take the instrument before replying
        elif self._approach is not None:
            self._approach.cancel()
        return {}

    async def _approach_get(self, args: dict[str, Any]) -> dict[str, Any]:
        running = self._approach is not None and not self._approach.done()
        return {"on": int(running)}

    async def _motor_move(self, args: dict[str, Any]) -> dict[str, Any]:
        direction = cmd.MotorDirection(args["direction"])
        if direction in (cmd.MotorDirection.Z_PLUS, cmd.MotorDirection.Z_MINUS):
            raise Refused("Z coarse steps are not simulated: use AutoApproach")
        if args["steps"] < 1:
            raise Refused("Motor.StartMove needs at least one step")
        await self._act(_coarse_step, wait=bool(args["wait"]))
        return {}

    # -- scan settings ------------------------------------------------------------------

    async def _frame_set(self, args: dict[str, Any]) -> dict[str, Any]:
        width, height = args["width"], args["height"]
        limits.SCAN_SIZE.check("width", width)
        limits.SCAN_SIZE.check("height", height)
        limits.check_frame(args["center_x"], args["center_y"], max(width, height),
                           self.state.pixels)
        forward, backward, _, _ = self.state.speeds(width)
        limits.SCAN_SPEED.check("forward speed", forward)
        limits.SCAN_SPEED.check("backward speed", backward)
        self.state.center_x, self.state.center_y = args["center_x"], args["center_y"]
        self.state.width, self.state.height, self.state.angle = width, height, args["angle"]
        return {}

    async def _frame_get(self, args: dict[str, Any]) -> dict[str, Any]:
        s = self.state
        return {"center_x": s.center_x, "center_y": s.center_y, "width": s.width,
                "height": s.height, "angle": s.angle}

    async def _buffer_set(self, args: dict[str, Any]) -> dict[str, Any]:
        channels = args["channels"]
        unknown = [c for c in channels if c not in self.signals]
        if unknown or not channels:
            known = ", ".join(f"{i} {name}" for i, name in self.signals.items())
            raise Refused(f"signals {unknown or 'none'} cannot be recorded; simulated: {known}")
        limits.SCAN_PIXELS.check("pixels", args["pixels"])
        pixels = max(PIXEL_MULTIPLE, PIXEL_MULTIPLE * round(args["pixels"] / PIXEL_MULTIPLE))
        lines = args["lines"] or round(pixels * self.state.lines / self.state.pixels)
        limits.SCAN_PIXELS.check("pixels", pixels)
        limits.SCAN_PIXELS.check("lines", lines)
        self.state.channels, self.state.pixels, self.state.lines = channels, pixels, lines
        return {}

    async def _buffer_get(self, args: dict[str, Any]) -> dict[str, Any]:
        s = self.state
        return {"channels": s.channels, "pixels": s.pixels, "lines": s.lines}

    async def _speed_set(self, args: dict[str, Any]) -> dict[str, Any]:
        keep = args["keep_constant"]
        if keep not in (cmd.KEEP_NO_CHANGE, cmd.KEEP_SPEED, cmd.KEEP_LINE_TIME):
            raise Refused(f"keep parameter constant must be 0, 1 or 2, not {keep}")
        if not args["speed_ratio"] > 0:
            raise Refused(f"speed ratio {args['speed_ratio']} must be above 0")
        trial = replace(self.state)
        if keep != cmd.KEEP_NO_CHANGE:
            trial.keep_line_time = keep == cmd.KEEP_LINE_TIME
        trial.speed_ratio = args["speed_ratio"]
        if trial.keep_line_time:
            if not args["forward_line_time"] > 0:
                raise Refused(f"forward time per line {args['forward_line_time']} s must be "
                              f"above 0")
            trial.forward_line_time = args["forward_line_time"]
        else:
            trial.forward_speed = args["forward_speed"]
        forward, backward, _, _ = trial.speeds()
        limits.SCAN_SPEED.check("forward speed", forward)
        limits.SCAN_SPEED.check("backward speed", backward)
        self.state = trial
        return {}

    async def _speed_get(self, args: dict[str, Any]) -> dict[str, Any]:
        forward, backward, forward_time, backward_time = self.state.speeds()
        return {"forward_speed": forward, "backward_speed": backward,
                "forward_line_time": forward_time, "backward_line_time": backward_time,
                "keep_constant": int(self.state.keep_line_time),
                "speed_ratio": self.state.speed_ratio}

    # -- scanning -----------------------------------------------------------------------

    async def _scan_action(self, args: dict[str, Any]) -> dict[str, Any]:
        action = cmd.ScanAction(args["action"]) if args["action"] <= 3 else None
        if action is cmd.ScanAction.STOP:
            if self._scan is not None:
                self._scan.cancel()
            return {}
        if action is not cmd.ScanAction.START:
            raise Refused(f"scan action {args['action']} is not simulated (start and stop are)")
        if args["direction"] != cmd.ScanDirection.UP:
            raise Refused("the simulator scans upward only (direction 1)")
        frame = self.state.frame()
        if self._scan is not None and not self._scan.done():
            self._scan.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._scan
        await self._busy.acquire()
        try:
            image, elapsed = await self._twin.call(lambda twin: twin.scan(frame))
        except BaseException:
            self._busy.release()
            raise
        self._image = image
        self._scan_started = True
        self._scan_done.clear()
        self._scan = self._spawn(self._pace(elapsed))
        self._scan.add_done_callback(self._end_of_scan)
        return {}

    def _end_of_scan(self, task: asyncio.Task[Any]) -> None:
        self._release(task)
        self._scan_done.set()

    async def _scan_status(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"running": int(self._scan is not None and not self._scan.done())}

    async def _wait_end_of_scan(self, args: dict[str, Any]) -> dict[str, Any]:
        timeout = args["timeout_ms"]
        if not self._scan_started and timeout >= 0:
            await asyncio.sleep(timeout / 1000)
            return {"timed_out": 1, "file_path": ""}
        try:
            await asyncio.wait_for(self._scan_done.wait(),
                                   None if timeout < 0 else timeout / 1000)
        except TimeoutError:
            return {"timed_out": 1, "file_path": ""}
        return {"timed_out": 0, "file_path": ""}

    async def _frame_data_grab(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = args["channel"]
        if channel not in self.state.channels:
            raise Refused(f"channel {channel} is not recorded (Scan.BufferSet records "
                          f"{list(self.state.channels)})")
        if args["data_direction"] != cmd.DataDirection.FORWARD:
            raise Refused("only forward data is simulated (data direction 1)")
        name = self.signals[channel]
        if self._image is None:
            data = np.full((self.state.lines, self.state.pixels), np.nan, np.float32)
        elif name.startswith("Z"):
            data = self._image
        else:
            data = np.full(self._image.shape, self.state.setpoint, np.float32)
        return {"channel_name": name, "data": data, "scan_direction": int(cmd.ScanDirection.UP)}

    # -- tip position and tip shaper ----------------------------------------------------

    async def _xy_set(self, args: dict[str, Any]) -> dict[str, Any]:
        limits.ACTION_POSITION.check("x", args["x"])
        limits.ACTION_POSITION.check("y", args["y"])
        self.state.x, self.state.y = args["x"], args["y"]
        return {}

    async def _xy_get(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"x": self.state.x, "y": self.state.y}

    async def _tip_shaper_set(self, args: dict[str, Any]) -> dict[str, Any]:
        props = replace(self.state.tip_shaper)
        for name in ("switch_off_delay", "bias", "tip_lift", "lift_time_1", "bias_lift",
                     "bias_settling_time", "lift_height", "lift_time_2", "end_wait_time"):
            setattr(props, name, args[name])
        for name in ("change_bias", "restore_feedback"):  # 0 no change, 1 true, 2 false
            if args[name] not in (0, 1, 2):
                raise Refused(f"{name} must be 0, 1 or 2, not {args[name]}")
            if args[name]:
                setattr(props, name, args[name] == 1)
        if props.tip_lift > 0:
            raise Refused(f"tip lift {props.tip_lift} m must be 0 or below: a dip goes down")
        limits.DIP_DEPTH.check("dip depth (minus the tip lift)", -props.tip_lift)
        self.state.tip_shaper = props
        return {}

    async def _tip_shaper_get(self, args: dict[str, Any]) -> dict[str, Any]:
        values: dict[str, Any] = asdict(self.state.tip_shaper)
        values["change_bias"] = int(values["change_bias"])
        values["restore_feedback"] = int(values["restore_feedback"])
        return values

    async def _tip_shaper_start(self, args: dict[str, Any]) -> dict[str, Any]:
        x, y, depth = self.state.x, self.state.y, -self.state.tip_shaper.tip_lift
        await self._act(lambda twin: twin.dip(x, y, depth), wait=bool(args["wait"]))
        return {}

    # -- the truth channel ----------------------------------------------------------------

    async def truth_request(self, request: dict[str, Any]) -> dict[str, Any]:
        """Answer one truth-channel request (see :func:`serve_truth`)."""
        op = request.get("op", "state")
        if op == "fault":
            fault = Fault(request["fault"])
            await self._twin.call(lambda twin: twin.inject_fault(fault))
            if fault is Fault.STALL:
                self._not_stalled.clear()
            else:
                self._not_stalled.set()
        elif op == "degrade":
            await self._act(Instrument.degrade_tip)
        elif op == "time_scale":
            value = float(request["value"])
            limits.TIME_SCALE.check("time_scale", value)
            self.time_scale = value
        elif op != "state":
            raise ValueError(f"unknown op {op!r}: state, fault, degrade or time_scale")
        state, _ = await self._twin.call(truth)
        return {"ok": True, "time_scale": self.time_scale, **state}

    async def serve_truth(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        """The truth channel: one JSON object per line in, one JSON object per line out.

        Requests: ``{"op": "state"}`` (or an empty line), ``{"op": "fault", "fault":
        "crash"}``, ``{"op": "degrade"}``, ``{"op": "time_scale", "value": 1.0}``. Every
        answer carries the twin's true state after the request, or ``ok: false`` and why.
        """
        try:
            while line := await reader.readline():
                try:
                    text = line.decode().strip()
                    answer = await self.truth_request(json.loads(text) if text else {})
                except (ValueError, KeyError, TypeError) as error:
                    answer = {"ok": False, "error": str(error)}
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


async def run(args: argparse.Namespace) -> None:
    """Start the twin, the protocol port and the truth port; serve until cancelled."""
    simulator = Simulator(Instrument(args.seed), time_scale=args.time_scale,
                          signals=args.signal_indexes, max_connections=args.max_connections)
    server = await asyncio.start_server(simulator.serve_client, args.host, args.port)
    truth_server = await asyncio.start_server(simulator.serve_truth, args.host, args.truth_port)
    port = server.sockets[0].getsockname()[1]
    truth_port = truth_server.sockets[0].getsockname()[1]
    print(f"spm-nanonis-sim ready host={args.host} port={port} truth_port={truth_port} "
          f"seed={args.seed} max_connections={args.max_connections}", flush=True)
    try:
        async with server, truth_server:
            await asyncio.gather(server.serve_forever(), truth_server.serve_forever())
    finally:
        simulator.close()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spm-nanonis-sim",
        description="A Nanonis controller simulator: the TCP programming interface over the "
                    "STM digital twin.")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help="protocol port, 0 for any free one (default: %(default)s)")
    parser.add_argument("--truth-port", type=int, default=0,
                        help="truth-channel port (JSON lines), 0 for any free one (default)")
    parser.add_argument("--seed", type=int, default=0, help="twin seed (default: %(default)s)")
    parser.add_argument("--time-scale", type=float, default=0.0,
                        help="wall seconds per simulated second: 0 as fast as possible "
                             "(default), 1 real time")
    parser.add_argument("--max-connections", type=int, default=MAX_CONNECTIONS,
                        help="connections served at once (default: %(default)s, as a Nanonis)")
    parser.add_argument("--signal-indexes", choices=sorted(SIGNALS), default="rt",
                        help="signal indexing: 'rt' (0-127, newer releases, Z is 30) or "
                             "'slots' (0-23, older releases, Z is 14) (default: %(default)s)")
    parser.add_argument("--log-level", default="WARNING",
                        help="logging level (default: %(default)s)")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point ``spm-nanonis-sim``."""
    args = _parser().parse_args(argv)
    if not limits.TIME_SCALE.contains(args.time_scale):
        _parser().error(f"--time-scale must be within {limits.TIME_SCALE.low:g} to "
                        f"{limits.TIME_SCALE.high:g}")
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
