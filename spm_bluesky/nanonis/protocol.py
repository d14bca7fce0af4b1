"""The Nanonis TCP protocol's framing and data types, as the vendor's "Nanonis TCP Protocol"
document (TCP Programming Interface) defines them.

Every message is a 40-byte header and a body, all numbers big-endian:

- request header: command name (32 bytes, zero-padded), body size (int32), send-response
  flag (uint16), 2 unused bytes (zero);
- response header: command name (32 bytes), body size (int32), 4 unused bytes (zero);
- a response body is the command's return arguments followed by the error section: error
  status (uint32, 1 = error), error description size (int32), error description (string).

Body values are encoded with :class:`BodyWriter` and decoded with :class:`BodyReader`; the
field types of :mod:`spm_bluesky.nanonis.commands` build on them. Pure Python, no I/O.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

#: Size of a request and of a response header (bytes).
HEADER_SIZE = 40
#: Size of the command-name field of a header (bytes).
COMMAND_NAME_SIZE = 32
#: Largest body this package accepts (bytes): a 1024 x 1024 float32 frame is 4 MiB.
MAX_BODY_SIZE = 64 * 1024 * 1024
#: Text encoding of strings (command names are ASCII; descriptions may not be).
ENCODING = "utf-8"

_REQUEST = struct.Struct(">32siHH")
_RESPONSE = struct.Struct(">32si4x")


class ProtocolError(ValueError):
    """Bytes that do not follow the protocol: a bad header, a short or over-long body."""


class NanonisError(RuntimeError):
    """A response whose error section reports an error; the text is the controller's."""

    def __init__(self, command: str, description: str) -> None:
        super().__init__(f"{command}: {description}")
        self.command = command
        self.description = description


def _command_field(command: str) -> bytes:
    raw = command.encode("ascii")
    if not raw or len(raw) > COMMAND_NAME_SIZE:
        raise ProtocolError(f"command name {command!r} must be 1 to {COMMAND_NAME_SIZE} bytes")
    return raw


def _command_name(field: bytes) -> str:
    try:
        name = field.rstrip(b"\0").decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError(f"command name {field!r} is not ASCII") from None
    if not name:
        raise ProtocolError("the command name is empty")
    return name


def _body_size(size: int) -> int:
    if not 0 <= size <= MAX_BODY_SIZE:
        raise ProtocolError(f"body size {size} is outside 0 to {MAX_BODY_SIZE} bytes")
    return size


@dataclass(frozen=True)
class RequestHeader:
    """The 40-byte header of a message from the client to the controller."""

    command: str
    body_size: int
    send_response: bool = True

    def pack(self) -> bytes:
        """The header's 40 bytes."""
        return _REQUEST.pack(_command_field(self.command), _body_size(self.body_size),
                             int(self.send_response), 0)

    @classmethod
    def unpack(cls, data: bytes) -> RequestHeader:
        """Parse 40 bytes; :class:`ProtocolError` if they cannot be a request header."""
        if len(data) != HEADER_SIZE:
            raise ProtocolError(f"a header is {HEADER_SIZE} bytes, got {len(data)}")
        name, size, flag, _unused = _REQUEST.unpack(data)
        return cls(_command_name(name), _body_size(size), bool(flag))


@dataclass(frozen=True)
class ResponseHeader:
    """The 40-byte header of a message from the controller back to the client."""

    command: str
    body_size: int

    def pack(self) -> bytes:
        """The header's 40 bytes."""
        return _RESPONSE.pack(_command_field(self.command), _body_size(self.body_size))

    @classmethod
    def unpack(cls, data: bytes) -> ResponseHeader:
        """Parse 40 bytes; :class:`ProtocolError` if they cannot be a response header."""
        if len(data) != HEADER_SIZE:
            raise ProtocolError(f"a header is {HEADER_SIZE} bytes, got {len(data)}")
        name, size = _RESPONSE.unpack(data)
        return cls(_command_name(name), _body_size(size))


class BodyWriter:
    """Append big-endian values to a message body, in argument order."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def getvalue(self) -> bytes:
        """The body written so far."""
        return b"".join(self._parts)

    def raw(self, data: bytes) -> None:
        """Append bytes as they are."""
        self._parts.append(bytes(data))

    def float32(self, value: float) -> None:
        """Append a 32-bit float."""
        self._parts.append(struct.pack(">f", value))

    def float64(self, value: float) -> None:
        """Append a 64-bit float."""
        self._parts.append(struct.pack(">d", value))

    def int32(self, value: int) -> None:
        """Append a 32-bit signed integer."""
        self._parts.append(struct.pack(">i", value))

    def uint16(self, value: int) -> None:
        """Append a 16-bit unsigned integer."""
        self._parts.append(struct.pack(">H", value))

    def uint32(self, value: int) -> None:
        """Append a 32-bit unsigned integer."""
        self._parts.append(struct.pack(">I", value))

    def int32_array(self, values: np.ndarray | list[int]) -> None:
        """Append the elements of a 1-D int32 array (its count is a separate argument)."""
        self._parts.append(np.asarray(values, dtype=">i4").tobytes())

    def float32_matrix(self, values: np.ndarray) -> None:
        """Append a 2-D float32 array, row by row (rows and columns are separate arguments)."""
        array = np.asarray(values)
        if array.ndim != 2:
            raise ValueError(f"a 2-D array is needed, got {array.ndim} dimensions")
        self._parts.append(array.astype(">f4").tobytes())


class BodyReader:
    """Read big-endian values from a message body, in argument order."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(bytes(data))
        self._offset = 0

    @property
    def remaining(self) -> int:
        """Bytes not read yet."""
        return len(self._data) - self._offset

    def take(self, size: int) -> bytes:
        """The next ``size`` bytes; :class:`ProtocolError` if the body is shorter."""
        if size < 0 or size > self.remaining:
            raise ProtocolError(f"body too short: {size} bytes needed at offset "
                                f"{self._offset}, {self.remaining} left")
        start = self._offset
        self._offset += size
        return bytes(self._data[start:self._offset])

    def _unpack(self, fmt: str) -> float | int:
        size = struct.calcsize(fmt)
        value: float | int = struct.unpack(fmt, self.take(size))[0]
        return value

    def float32(self) -> float:
        """Read a 32-bit float."""
        return float(self._unpack(">f"))

    def float64(self) -> float:
        """Read a 64-bit float."""
        return float(self._unpack(">d"))

    def int32(self) -> int:
        """Read a 32-bit signed integer."""
        return int(self._unpack(">i"))

    def uint16(self) -> int:
        """Read a 16-bit unsigned integer."""
        return int(self._unpack(">H"))

    def uint32(self) -> int:
        """Read a 32-bit unsigned integer."""
        return int(self._unpack(">I"))

    def string(self, size: int) -> str:
        """Read a string of ``size`` bytes (its size was a separate argument)."""
        return self.take(size).decode(ENCODING, errors="replace")

    def int32_array(self, count: int) -> np.ndarray:
        """Read ``count`` 32-bit signed integers."""
        if count < 0:
            raise ProtocolError(f"array size {count} is negative")
        return np.frombuffer(self.take(4 * count), dtype=">i4").astype(np.int32)

    def float32_matrix(self, rows: int, columns: int) -> np.ndarray:
        """Read a ``rows x columns`` float32 array stored row by row."""
        if rows < 0 or columns < 0:
            raise ProtocolError(f"array shape {rows} x {columns} is negative")
        data = self.take(4 * rows * columns)
        return np.frombuffer(data, dtype=">f4").astype(np.float32).reshape(rows, columns)

    def expect_end(self) -> None:
        """:class:`ProtocolError` unless every byte has been read."""
        if self.remaining:
            raise ProtocolError(f"body too long: {self.remaining} bytes left over")


@dataclass(frozen=True)
class ErrorSection:
    """The error section that ends every response body."""

    status: bool = False
    description: str = ""

    def pack(self) -> bytes:
        """The section's bytes: status (uint32), description size (int32), description."""
        text = self.description.encode(ENCODING)
        return struct.pack(">Ii", int(self.status), len(text)) + text

    @classmethod
    def read(cls, reader: BodyReader) -> ErrorSection:
        """Read the section from ``reader`` (after the return arguments)."""
        status = reader.uint32()
        size = reader.int32()
        if size < 0:
            raise ProtocolError(f"error description size {size} is negative")
        return cls(bool(status), reader.string(size))

    def raise_for(self, command: str) -> None:
        """Raise :class:`NanonisError` if the section reports an error."""
        if self.status:
            raise NanonisError(command, self.description or "error without a description")


def request(command: str, body: bytes = b"", send_response: bool = True) -> bytes:
    """A whole request message: header and body."""
    return RequestHeader(command, len(body), send_response).pack() + body


def response(command: str, returns: bytes = b"", error: ErrorSection | None = None) -> bytes:
    """A whole response message: header, return arguments and error section."""
    body = returns + (error or ErrorSection()).pack()
    return ResponseHeader(command, len(body)).pack() + body
