"""The Nanonis commands this project maps, with their argument and return layouts.

Each :class:`Command` lists its arguments and its return arguments (before the error
section) in the order and with the types of the "Nanonis TCP Protocol" document. Where the
document sends a size right before a string or an array, the size and the data are one
field here (:class:`String`, :class:`Int32Array`, :class:`Float32Matrix`) with the size's
own type, so that a value is never out of step with its size.

Values are plain Python: ``float`` for float32/float64, ``int`` for the integer types,
``str``, ``tuple[int, ...]`` and a 2-D ``numpy.ndarray`` (float32).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Protocol

import numpy as np

from spm_bluesky.nanonis.protocol import ENCODING, BodyReader, BodyWriter, ProtocolError


class FieldType(Protocol):
    """How one argument is written to and read from a body."""

    @property
    def name(self) -> str:
        """The type's name in the protocol document."""

    def write(self, writer: BodyWriter, value: Any) -> None: ...

    def read(self, reader: BodyReader) -> Any: ...

    def default(self) -> Any: ...


@dataclass(frozen=True)
class Scalar:
    """A number of one of the document's fixed-size types."""

    name: str

    def write(self, writer: BodyWriter, value: Any) -> None:
        getattr(writer, self.name)(value)

    def read(self, reader: BodyReader) -> Any:
        return getattr(reader, self.name)()

    def default(self) -> Any:
        return 0.0 if self.name.startswith("float") else 0


FLOAT32 = Scalar("float32")
FLOAT64 = Scalar("float64")
INT32 = Scalar("int32")
UINT16 = Scalar("uint16")
UINT32 = Scalar("uint32")


@dataclass(frozen=True)
class String:
    """A string preceded by its size in bytes (``int32``, or ``uint32`` where so documented)."""

    size_type: Scalar = INT32
    name: str = "string"

    def write(self, writer: BodyWriter, value: Any) -> None:
        text = str(value).encode(ENCODING)
        self.size_type.write(writer, len(text))
        writer.raw(text)

    def read(self, reader: BodyReader) -> Any:
        return reader.string(self.size_type.read(reader))

    def default(self) -> Any:
        return ""


@dataclass(frozen=True)
class Int32Array:
    """A 1-D int32 array preceded by its number of elements (int32)."""

    name: str = "1D array int"

    def write(self, writer: BodyWriter, value: Any) -> None:
        values = [int(v) for v in value]
        writer.int32(len(values))
        writer.int32_array(values)

    def read(self, reader: BodyReader) -> Any:
        return tuple(int(v) for v in reader.int32_array(reader.int32()))

    def default(self) -> Any:
        return ()


@dataclass(frozen=True)
class Float32Matrix:
    """A 2-D float32 array preceded by its rows and columns (int32 each), row by row."""

    name: str = "2D array float32"

    def write(self, writer: BodyWriter, value: Any) -> None:
        array = np.asarray(value, dtype=np.float32)
        if array.ndim != 2:
            raise ValueError(f"a 2-D array is needed, got {array.ndim} dimensions")
        writer.int32(array.shape[0])
        writer.int32(array.shape[1])
        writer.float32_matrix(array)

    def read(self, reader: BodyReader) -> Any:
        rows = reader.int32()
        columns = reader.int32()
        return reader.float32_matrix(rows, columns)

    def default(self) -> Any:
        return np.zeros((0, 0), np.float32)


@dataclass(frozen=True)
class Field:
    """One named argument or return argument."""

    name: str
    type: FieldType


def _fields(*pairs: tuple[str, FieldType]) -> tuple[Field, ...]:
    return tuple(Field(name, kind) for name, kind in pairs)


@dataclass(frozen=True)
class Command:
    """A Nanonis function: its name, arguments and return arguments (error section apart)."""

    name: str
    args: tuple[Field, ...] = ()
    returns: tuple[Field, ...] = ()

    def encode_args(self, values: Mapping[str, Any]) -> bytes:
        """The request body for ``values`` (one per argument, by name)."""
        return _encode(self.args, values, f"{self.name} argument")

    def decode_args(self, body: bytes) -> dict[str, Any]:
        """The arguments in a request body; :class:`ProtocolError` unless it fits exactly."""
        reader = BodyReader(body)
        values = _decode(self.args, reader)
        reader.expect_end()
        return values

    def encode_returns(self, values: Mapping[str, Any]) -> bytes:
        """The return arguments of a response body (without the error section)."""
        return _encode(self.returns, values, f"{self.name} return value")

    def decode_returns(self, reader: BodyReader) -> dict[str, Any]:
        """Read the return arguments; the error section follows in ``reader``."""
        return _decode(self.returns, reader)

    def default_returns(self) -> dict[str, Any]:
        """Zero values of the return arguments, sent with an error."""
        return {field.name: field.type.default() for field in self.returns}


def _encode(fields: tuple[Field, ...], values: Mapping[str, Any], what: str) -> bytes:
    unknown = set(values) - {field.name for field in fields}
    if unknown:
        raise KeyError(f"unknown {what}(s): {sorted(unknown)}")
    writer = BodyWriter()
    for field in fields:
        if field.name not in values:
            raise KeyError(f"missing {what} {field.name!r}")
        field.type.write(writer, values[field.name])
    return writer.getvalue()


def _decode(fields: tuple[Field, ...], reader: BodyReader) -> dict[str, Any]:
    try:
        return {field.name: field.type.read(reader) for field in fields}
    except ValueError as error:  # e.g. a negative or impossible array shape
        raise ProtocolError(str(error)) from error


class ScanAction(IntEnum):
    """``Scan.Action``: what to do."""

    START = 0
    STOP = 1
    PAUSE = 2
    RESUME = 3


class ScanDirection(IntEnum):
    """``Scan.Action`` and ``Scan.FrameDataGrab``: the slow-axis direction."""

    DOWN = 0
    UP = 1


class DataDirection(IntEnum):
    """``Scan.FrameDataGrab``: which trace of each line."""

    BACKWARD = 0
    FORWARD = 1


class MotorDirection(IntEnum):
    """``Motor.StartMove``: the coarse-motion direction."""

    X_PLUS = 0
    X_MINUS = 1
    Y_PLUS = 2
    Y_MINUS = 3
    Z_PLUS = 4
    Z_MINUS = 5


@dataclass
class TipShaperProps:
    """``TipShaper.PropsSet/PropsGet`` settings, named as the command's fields.

    ``change_bias`` and ``restore_feedback`` read back as booleans; when set, 0 means no
    change, 1 true and 2 false. A negative ``tip_lift`` moves the tip toward the sample.
    """

    switch_off_delay: float = 0.05
    change_bias: bool = False
    bias: float = 0.0
    tip_lift: float = -1.5e-9
    lift_time_1: float = 0.1
    bias_lift: float = 0.0
    bias_settling_time: float = 0.05
    lift_height: float = 1.5e-9
    lift_time_2: float = 0.1
    end_wait_time: float = 0.05
    restore_feedback: bool = True


#: ``Scan.SpeedSet``'s "keep parameter constant": 0 no change, 1 linear speed, 2 time per line.
#: ``Scan.SpeedGet`` answers 0 for linear speed and 1 for time per line.
KEEP_NO_CHANGE, KEEP_SPEED, KEEP_LINE_TIME = 0, 1, 2

_SPEED = (("forward_speed", FLOAT32), ("backward_speed", FLOAT32),
          ("forward_line_time", FLOAT32), ("backward_line_time", FLOAT32),
          ("keep_constant", UINT16), ("speed_ratio", FLOAT32))
_FRAME = (("center_x", FLOAT32), ("center_y", FLOAT32), ("width", FLOAT32),
          ("height", FLOAT32), ("angle", FLOAT32))
_BUFFER = (("channels", Int32Array()), ("pixels", INT32), ("lines", INT32))
_TIP_SHAPER = (("switch_off_delay", FLOAT32), ("change_bias", UINT32), ("bias", FLOAT32),
               ("tip_lift", FLOAT32), ("lift_time_1", FLOAT32), ("bias_lift", FLOAT32),
               ("bias_settling_time", FLOAT32), ("lift_height", FLOAT32),
               ("lift_time_2", FLOAT32), ("end_wait_time", FLOAT32),
               ("restore_feedback", UINT32))

BIAS_SET = Command("Bias.Set", _fields(("bias", FLOAT32)))
BIAS_GET = Command("Bias.Get", returns=_fields(("bias", FLOAT32)))
BIAS_PULSE = Command("Bias.Pulse", _fields(
    ("wait_until_done", UINT32), ("width", FLOAT32), ("bias", FLOAT32),
    ("z_hold", UINT16), ("relative", UINT16)))
CURRENT_GET = Command("Current.Get", returns=_fields(("current", FLOAT32)))
ZCTRL_ZPOS_GET = Command("ZCtrl.ZPosGet", returns=_fields(("z", FLOAT32)))
ZCTRL_ONOFF_GET = Command("ZCtrl.OnOffGet", returns=_fields(("on", UINT32)))
ZCTRL_SETPNT_SET = Command("ZCtrl.SetpntSet", _fields(("setpoint", FLOAT32)))
ZCTRL_SETPNT_GET = Command("ZCtrl.SetpntGet", returns=_fields(("setpoint", FLOAT32)))
ZCTRL_WITHDRAW = Command("ZCtrl.Withdraw", _fields(("wait", UINT32), ("timeout_ms", INT32)))
AUTO_APPROACH_OPEN = Command("AutoApproach.Open")
AUTO_APPROACH_ONOFF_SET = Command("AutoApproach.OnOffSet", _fields(("on", UINT16)))
AUTO_APPROACH_ONOFF_GET = Command("AutoApproach.OnOffGet", returns=_fields(("on", UINT16)))
SCAN_ACTION = Command("Scan.Action", _fields(("action", UINT16), ("direction", UINT32)))
SCAN_STATUS_GET = Command("Scan.StatusGet", returns=_fields(("running", UINT32)))
SCAN_WAIT_END_OF_SCAN = Command(
    "Scan.WaitEndOfScan", _fields(("timeout_ms", INT32)),
    _fields(("timed_out", UINT32), ("file_path", String(UINT32))))
SCAN_FRAME_SET = Command("Scan.FrameSet", _fields(*_FRAME))
SCAN_FRAME_GET = Command("Scan.FrameGet", returns=_fields(*_FRAME))
SCAN_BUFFER_SET = Command("Scan.BufferSet", _fields(*_BUFFER))
SCAN_BUFFER_GET = Command("Scan.BufferGet", returns=_fields(*_BUFFER))
SCAN_SPEED_SET = Command("Scan.SpeedSet", _fields(*_SPEED))
SCAN_SPEED_GET = Command("Scan.SpeedGet", returns=_fields(*_SPEED))
SCAN_FRAME_DATA_GRAB = Command(
    "Scan.FrameDataGrab", _fields(("channel", UINT32), ("data_direction", UINT32)),
    _fields(("channel_name", String()), ("data", Float32Matrix()),
            ("scan_direction", UINT32)))
FOLME_XYPOS_SET = Command("FolMe.XYPosSet", _fields(("x", FLOAT64), ("y", FLOAT64),
                                                    ("wait", UINT32)))
FOLME_XYPOS_GET = Command("FolMe.XYPosGet", _fields(("wait_newest", UINT32)),
                          _fields(("x", FLOAT64), ("y", FLOAT64)))
TIP_SHAPER_START = Command("TipShaper.Start", _fields(("wait", UINT32), ("timeout_ms", INT32)))
TIP_SHAPER_PROPS_SET = Command("TipShaper.PropsSet", _fields(*_TIP_SHAPER))
TIP_SHAPER_PROPS_GET = Command("TipShaper.PropsGet", returns=_fields(*_TIP_SHAPER))
MOTOR_START_MOVE = Command("Motor.StartMove", _fields(
    ("direction", UINT32), ("steps", UINT16), ("group", UINT32), ("wait", UINT32)))

#: Every mapped command, by name.
COMMANDS: dict[str, Command] = {command.name: command for command in (
    BIAS_SET, BIAS_GET, BIAS_PULSE, CURRENT_GET, ZCTRL_ZPOS_GET, ZCTRL_ONOFF_GET,
    ZCTRL_SETPNT_SET, ZCTRL_SETPNT_GET, ZCTRL_WITHDRAW, AUTO_APPROACH_OPEN,
    AUTO_APPROACH_ONOFF_SET, AUTO_APPROACH_ONOFF_GET, SCAN_ACTION, SCAN_STATUS_GET,
    SCAN_WAIT_END_OF_SCAN, SCAN_FRAME_SET, SCAN_FRAME_GET, SCAN_BUFFER_SET, SCAN_BUFFER_GET,
    SCAN_SPEED_SET, SCAN_SPEED_GET, SCAN_FRAME_DATA_GRAB, FOLME_XYPOS_SET, FOLME_XYPOS_GET,
    TIP_SHAPER_START, TIP_SHAPER_PROPS_SET, TIP_SHAPER_PROPS_GET, MOTOR_START_MOVE)}
