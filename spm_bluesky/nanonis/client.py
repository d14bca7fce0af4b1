"""An asyncio client for a Nanonis controller's TCP programming interface.

One :class:`NanonisClient` holds one TCP connection (a Nanonis serves at most four) and
always asks for the response, so that every command's error section is read: an error
becomes :class:`~spm_bluesky.nanonis.protocol.NanonisError` with the controller's text.
A controller runs the commands of one connection in order, so :meth:`NanonisClient.call_many`
sends a few requests at once and then reads their responses in order: one round trip for
several reads (:meth:`NanonisClient.status`) or for a whole frame (:meth:`NanonisClient.acquire`).
A timeout or a broken stream closes the connection (the stream can no longer be trusted to
be in step) and raises :class:`ConnectionError`; the next call connects again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any

import numpy as np

from spm_bluesky.nanonis import commands as cmd
from spm_bluesky.nanonis.commands import TipShaperProps
from spm_bluesky.nanonis.protocol import (
    HEADER_SIZE,
    BodyReader,
    ErrorSection,
    ProtocolError,
    ResponseHeader,
    request,
)

#: Seconds a command may take before the connection is given up (a scan may take longer:
#: wait for it with ``Scan.WaitEndOfScan`` and a timeout shorter than this).
DEFAULT_TIMEOUT = 30.0


@dataclass(frozen=True)
class ScanFrame:
    """``Scan.FrameSet/FrameGet``: centre, width and height (m), angle (deg, clockwise)."""

    center_x: float
    center_y: float
    width: float
    height: float
    angle: float = 0.0


@dataclass(frozen=True)
class ScanBuffer:
    """``Scan.BufferSet/BufferGet``: recorded signal indexes, pixels per line, lines."""

    channels: tuple[int, ...]
    pixels: int
    lines: int


@dataclass(frozen=True)
class ScanSpeed:
    """``Scan.SpeedGet``: speeds (m/s), times per line (s), which is kept, the ratio."""

    forward_speed: float
    backward_speed: float
    forward_line_time: float
    backward_line_time: float
    keeps_line_time: bool
    speed_ratio: float


@dataclass(frozen=True)
class FrameData:
    """``Scan.FrameDataGrab``: one channel of the scan frame, ``lines x pixels``."""

    channel_name: str
    data: np.ndarray
    scan_up: bool


@dataclass(frozen=True)
class ControllerStatus:
    """``ZCtrl.OnOffGet``, ``ZCtrl.ZPosGet`` and ``Current.Get``, read in one round trip."""

    feedback_on: bool
    z: float
    current: float


#: The reads of :class:`ControllerStatus`, sent together.
_STATUS: tuple[tuple[cmd.Command, Mapping[str, Any]], ...] = (
    (cmd.ZCTRL_ONOFF_GET, {}), (cmd.ZCTRL_ZPOS_GET, {}), (cmd.CURRENT_GET, {}))


def _status(on: dict[str, Any], z: dict[str, Any], current: dict[str, Any]
            ) -> ControllerStatus:
    return ControllerStatus(bool(on["on"]), float(z["z"]), float(current["current"]))


class NanonisClient:
    """Typed calls to the mapped commands over one connection."""

    def __init__(self, host: str, port: int, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> NanonisClient:
        await self.connect()
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        trace: TracebackType | None) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        """True while a connection is open."""
        return self._writer is not None and not self._writer.is_closing()

    async def connect(self) -> None:
        """Open the connection (if not open)."""
        if not self.connected:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), self.timeout)

    async def close(self) -> None:
        """Close the connection."""
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def abandon(self) -> None:
        """Close the connection without waiting (a cancelled call cannot wait)."""
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()

    async def call(self, command: cmd.Command, timeout: float | None = None,
                   **args: Any) -> dict[str, Any]:
        """Send ``command`` with ``args``; return its return values by name."""
        return (await self.call_many((command, args), timeout=timeout))[0]

    async def call_many(self, *calls: tuple[cmd.Command, Mapping[str, Any]],
                        timeout: float | None = None) -> list[dict[str, Any]]:
        """Send the requests of ``calls`` at once, then read their responses in order.

        Every response is read, so the connection stays in step; then the first error
        section that reports an error raises :class:`NanonisError`. A later command runs
        even if an earlier one was refused: batch only what may run regardless.
        """
        bodies = [(command, command.encode_args(args)) for command, args in calls]
        async with self._lock:
            try:
                await self.connect()
                return await asyncio.wait_for(self._exchange(bodies), timeout or self.timeout)
            except (OSError, asyncio.IncompleteReadError, ProtocolError) as error:
                await self.close()  # OSError covers timeouts and refused connections
                names = ", ".join(command.name for command, _ in calls)
                raise ConnectionError(f"{names} to {self.host}:{self.port}: "
                                      f"{error!r}") from error
            except asyncio.CancelledError:
                self.abandon()  # a reply may still come: the stream is out of step
                raise

    async def _exchange(self, bodies: list[tuple[cmd.Command, bytes]]
                        ) -> list[dict[str, Any]]:
        assert self._reader is not None and self._writer is not None
        self._writer.write(b"".join(request(command.name, body) for command, body in bodies))
        await self._writer.drain()
        results: list[dict[str, Any]] = []
        errors: list[tuple[str, ErrorSection]] = []
        for command, _ in bodies:
            header = ResponseHeader.unpack(await self._reader.readexactly(HEADER_SIZE))
            if header.command != command.name:
                raise ProtocolError(f"response to {header.command!r}, expected "
                                    f"{command.name!r}")
            reader = BodyReader(await self._reader.readexactly(header.body_size))
            results.append(command.decode_returns(reader))
            errors.append((command.name, ErrorSection.read(reader)))
            reader.expect_end()
        for name, error in errors:
            error.raise_for(name)
        return results

    # -- bias, current, z-controller ------------------------------------------------------

    async def bias_set(self, bias: float) -> None:
        """``Bias.Set`` (V)."""
        await self.call(cmd.BIAS_SET, bias=bias)

    async def bias_get(self) -> float:
        """``Bias.Get`` (V)."""
        return float((await self.call(cmd.BIAS_GET))["bias"])

    async def bias_pulse(self, width: float, bias: float, wait: bool = True,
                         z_hold: int = 0, relative: int = 2) -> None:
        """``Bias.Pulse``: ``width`` s at ``bias`` V (absolute unless ``relative`` is 1)."""
        await self.call(cmd.BIAS_PULSE, wait_until_done=int(wait), width=width, bias=bias,
                        z_hold=z_hold, relative=relative)

    async def current_get(self) -> float:
        """``Current.Get`` (A)."""
        return float((await self.call(cmd.CURRENT_GET))["current"])

    async def z_position_get(self) -> float:
        """``ZCtrl.ZPosGet`` (m)."""
        return float((await self.call(cmd.ZCTRL_ZPOS_GET))["z"])

    async def status(self) -> ControllerStatus:
        """``ZCtrl.OnOffGet``, ``ZCtrl.ZPosGet`` and ``Current.Get`` in one round trip."""
        return _status(*await self.call_many(*_STATUS))

    async def z_controller_on(self) -> bool:
        """``ZCtrl.OnOffGet``: true while the feedback is on."""
        return bool((await self.call(cmd.ZCTRL_ONOFF_GET))["on"])

    async def setpoint_set(self, setpoint: float) -> None:
        """``ZCtrl.SetpntSet`` (A in STM)."""
        await self.call(cmd.ZCTRL_SETPNT_SET, setpoint=setpoint)

    async def setpoint_get(self) -> float:
        """``ZCtrl.SetpntGet``."""
        return float((await self.call(cmd.ZCTRL_SETPNT_GET))["setpoint"])

    async def withdraw(self, wait: bool = True, timeout_ms: int = -1) -> None:
        """``ZCtrl.Withdraw``: feedback off, tip fully retracted."""
        await self.call(cmd.ZCTRL_WITHDRAW, wait=int(wait), timeout_ms=timeout_ms)

    # -- coarse motion ------------------------------------------------------------------

    async def auto_approach_open(self) -> None:
        """``AutoApproach.Open``."""
        await self.call(cmd.AUTO_APPROACH_OPEN)

    async def auto_approach_set(self, on: bool) -> None:
        """``AutoApproach.OnOffSet``: start (true) or stop the auto-approach."""
        await self.call(cmd.AUTO_APPROACH_ONOFF_SET, on=int(on))

    async def auto_approach_running(self) -> bool:
        """``AutoApproach.OnOffGet``."""
        return bool((await self.call(cmd.AUTO_APPROACH_ONOFF_GET))["on"])

    async def motor_start_move(self, direction: cmd.MotorDirection, steps: int,
                               group: int = 0, wait: bool = True) -> None:
        """``Motor.StartMove``."""
        await self.call(cmd.MOTOR_START_MOVE, direction=int(direction), steps=steps,
                        group=group, wait=int(wait))

    # -- scan ---------------------------------------------------------------------------

    async def frame_set(self, frame: ScanFrame) -> None:
        """``Scan.FrameSet``."""
        await self.call(cmd.SCAN_FRAME_SET, **asdict(frame))

    async def frame_get(self) -> ScanFrame:
        """``Scan.FrameGet``."""
        return ScanFrame(**await self.call(cmd.SCAN_FRAME_GET))

    async def buffer_set(self, buffer: ScanBuffer) -> None:
        """``Scan.BufferSet`` (the controller coerces pixels to a multiple of 16)."""
        await self.call(cmd.SCAN_BUFFER_SET, **asdict(buffer))

    async def buffer_get(self) -> ScanBuffer:
        """``Scan.BufferGet``."""
        return ScanBuffer(**await self.call(cmd.SCAN_BUFFER_GET))

    async def speed_set(self, forward_speed: float, speed_ratio: float = 1.0) -> None:
        """``Scan.SpeedSet`` keeping the linear speed constant."""
        await self.call(cmd.SCAN_SPEED_SET, forward_speed=forward_speed,
                        backward_speed=forward_speed * speed_ratio, forward_line_time=0.0,
                        backward_line_time=0.0, keep_constant=cmd.KEEP_SPEED,
                        speed_ratio=speed_ratio)

    async def speed_get(self) -> ScanSpeed:
        """``Scan.SpeedGet``."""
        values = await self.call(cmd.SCAN_SPEED_GET)
        keep = values.pop("keep_constant")
        return ScanSpeed(keeps_line_time=keep == 1, **values)

    async def scan_action(self, action: cmd.ScanAction,
                          direction: cmd.ScanDirection = cmd.ScanDirection.UP) -> None:
        """``Scan.Action``."""
        await self.call(cmd.SCAN_ACTION, action=int(action), direction=int(direction))

    async def acquire(self, channel: int, timeout_ms: int
                      ) -> tuple[FrameData, ControllerStatus] | None:
        """Scan one frame upward and grab it, in one round trip: ``Scan.Action`` (start, up),
        ``Scan.WaitEndOfScan`` (``timeout_ms``), ``Scan.FrameDataGrab`` (``channel``,
        forward) and the :meth:`status` reads. None if the scan had not ended within
        ``timeout_ms`` (what was grabbed is a part of it): then wait on with
        :meth:`wait_end_of_scan` and grab with :meth:`grab_with_status`."""
        start = {"action": int(cmd.ScanAction.START), "direction": int(cmd.ScanDirection.UP)}
        _, waited, *rest = await self.call_many(
            (cmd.SCAN_ACTION, start), (cmd.SCAN_WAIT_END_OF_SCAN, {"timeout_ms": timeout_ms}),
            *self._grab_and_status(channel), timeout=self.timeout + max(timeout_ms, 0) / 1000)
        return None if waited["timed_out"] else self._grabbed(*rest)

    async def grab_with_status(self, channel: int) -> tuple[FrameData, ControllerStatus]:
        """``Scan.FrameDataGrab`` (``channel``, forward) and the :meth:`status` reads, in one
        round trip."""
        return self._grabbed(*await self.call_many(*self._grab_and_status(channel)))

    @staticmethod
    def _grab_and_status(channel: int) -> tuple[tuple[cmd.Command, Mapping[str, Any]], ...]:
        return ((cmd.SCAN_FRAME_DATA_GRAB, {"channel": channel,
                                            "data_direction": int(cmd.DataDirection.FORWARD)}),
                *_STATUS)

    @staticmethod
    def _grabbed(grab: dict[str, Any], *status: dict[str, Any]
                 ) -> tuple[FrameData, ControllerStatus]:
        return (FrameData(grab["channel_name"], grab["data"],
                          grab["scan_direction"] == cmd.ScanDirection.UP), _status(*status))

    async def scan_running(self) -> bool:
        """``Scan.StatusGet``."""
        return bool((await self.call(cmd.SCAN_STATUS_GET))["running"])

    async def wait_end_of_scan(self, timeout_ms: int) -> bool:
        """``Scan.WaitEndOfScan``: true if the scan ended, false if the wait timed out."""
        values = await self.call(cmd.SCAN_WAIT_END_OF_SCAN,
                                 timeout=self.timeout + max(timeout_ms, 0) / 1000,
                                 timeout_ms=timeout_ms)
        return not values["timed_out"]

    async def frame_data_grab(self, channel: int, forward: bool = True) -> FrameData:
        """``Scan.FrameDataGrab``: one channel of the last frame."""
        values = await self.call(cmd.SCAN_FRAME_DATA_GRAB, channel=channel,
                                 data_direction=int(forward))
        return FrameData(values["channel_name"], values["data"],
                         values["scan_direction"] == cmd.ScanDirection.UP)

    # -- tip position and tip shaper ----------------------------------------------------

    async def xy_set(self, x: float, y: float, wait: bool = True) -> None:
        """``FolMe.XYPosSet`` (m)."""
        await self.call(cmd.FOLME_XYPOS_SET, x=x, y=y, wait=int(wait))

    async def xy_get(self, wait_newest: bool = False) -> tuple[float, float]:
        """``FolMe.XYPosGet`` (m)."""
        values = await self.call(cmd.FOLME_XYPOS_GET, wait_newest=int(wait_newest))
        return float(values["x"]), float(values["y"])

    async def tip_shaper_props_set(self, props: TipShaperProps) -> None:
        """``TipShaper.PropsSet`` (the two booleans are sent as 1 true, 2 false)."""
        values: dict[str, Any] = asdict(props)
        for name in ("change_bias", "restore_feedback"):
            values[name] = 1 if values[name] else 2
        await self.call(cmd.TIP_SHAPER_PROPS_SET, **values)

    async def tip_shaper_props_get(self) -> TipShaperProps:
        """``TipShaper.PropsGet``."""
        values = await self.call(cmd.TIP_SHAPER_PROPS_GET)
        for name in ("change_bias", "restore_feedback"):
            values[name] = bool(values[name])
        return TipShaperProps(**values)

    async def tip_shaper_start(self, wait: bool = True, timeout_ms: int = -1) -> None:
        """``TipShaper.Start``."""
        await self.call(cmd.TIP_SHAPER_START, wait=int(wait), timeout_ms=timeout_ms)
