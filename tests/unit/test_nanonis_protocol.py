"""The Nanonis TCP codec against the protocol document's worked examples, byte for byte,
and the simulator's answers to good and bad requests (in process, no sockets)."""

from __future__ import annotations

import asyncio
import struct

import numpy as np
import pytest

from spm_bluesky.nanonis import commands as cmd
from spm_bluesky.nanonis.protocol import (
    HEADER_SIZE,
    BodyReader,
    ErrorSection,
    NanonisError,
    ProtocolError,
    RequestHeader,
    ResponseHeader,
    request,
    response,
)
from spm_bluesky.nanonis.simulator import Simulator
from spm_bluesky.twin import Instrument


def hexbytes(text: str) -> bytes:
    """Bytes from the document's hex notation (groups of four digits)."""
    return bytes.fromhex(text.replace(" ", "").replace("\n", ""))


# The document's "Examples" section: the command names padded to 32 bytes.
FOLME_XYPOSGET = hexbytes("466F 6C4D 652E 5859 506F 7347 6574" + " 0000" * 9)
FOLME_XYPOSSET = hexbytes("466F 6C4D 652E 5859 506F 7353 6574" + " 0000" * 9)


def test_example_return_the_tip_position_request() -> None:
    expected = FOLME_XYPOSGET + hexbytes("0000 0004  0001  0000  0000 0001")
    body = cmd.FOLME_XYPOS_GET.encode_args({"wait_newest": 1})
    assert request("FolMe.XYPosGet", body) == expected
    header = RequestHeader.unpack(expected[:HEADER_SIZE])
    assert header == RequestHeader("FolMe.XYPosGet", 4, True)


def test_example_return_the_tip_position_response() -> None:
    expected = FOLME_XYPOSGET + hexbytes(
        "0000 0018  0000 0000  3E35 798E E230 8C3A  BE35 798E E230 8C3A  0000 0000  0000 0000")
    returns = cmd.FOLME_XYPOS_GET.encode_returns({"x": 5e-9, "y": -5e-9})
    assert response("FolMe.XYPosGet", returns) == expected
    assert ResponseHeader.unpack(expected[:HEADER_SIZE]) == ResponseHeader("FolMe.XYPosGet", 24)
    reader = BodyReader(expected[HEADER_SIZE:])
    assert cmd.FOLME_XYPOS_GET.decode_returns(reader) == {"x": 5e-9, "y": -5e-9}
    assert ErrorSection.read(reader) == ErrorSection(False, "")
    reader.expect_end()


def test_example_change_the_tip_position_request() -> None:
    expected = FOLME_XYPOSSET + hexbytes(
        "0000 0014  0001  0000  3E45 798E E230 8C3A  3E50 1B2B 29A4 692B  0000 0001")
    body = cmd.FOLME_XYPOS_SET.encode_args({"x": 10e-9, "y": 15e-9, "wait": 1})
    assert request("FolMe.XYPosSet", body) == expected
    assert cmd.FOLME_XYPOS_SET.decode_args(expected[HEADER_SIZE:]) == {
        "x": 10e-9, "y": 15e-9, "wait": 1}


def test_example_change_the_tip_position_response() -> None:
    expected = FOLME_XYPOSSET + hexbytes("0000 0008  0000 0000  0000 0000  0000 0000")
    assert response("FolMe.XYPosSet") == expected


def test_request_header_without_response_flag() -> None:
    header = RequestHeader("Bias.Set", 4, send_response=False).pack()
    assert header == b"Bias.Set".ljust(32, b"\0") + b"\0\0\0\x04" + b"\0\0" + b"\0\0"


def test_error_section_layout() -> None:
    section = ErrorSection(True, "no")
    assert section.pack() == b"\0\0\0\x01" + b"\0\0\0\x02" + b"no"
    with pytest.raises(NanonisError, match=r"Bias\.Set: no"):
        section.raise_for("Bias.Set")
    ErrorSection(False, "").raise_for("Bias.Set")


@pytest.mark.parametrize("data", [
    b"Bias.Get".ljust(32, b"\0") + b"\0\0\0\0\0\x01",                     # 38 bytes
    b"\0" * 32 + b"\0\0\0\0\0\x01\0\0",                                   # no name
    b"Bias.Get".ljust(32, b"\0") + struct.pack(">iHH", -4, 1, 0),          # negative size
    b"Bias\xff".ljust(32, b"\0") + struct.pack(">iHH", 0, 1, 0),           # not ASCII
])
def test_bad_request_headers_are_protocol_errors(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        RequestHeader.unpack(data)


def test_command_name_longer_than_32_bytes_is_refused() -> None:
    with pytest.raises(ProtocolError):
        request("X" * 33)


def test_wrong_body_sizes_are_protocol_errors() -> None:
    with pytest.raises(ProtocolError, match="too short"):
        cmd.BIAS_SET.decode_args(b"\0\0")
    with pytest.raises(ProtocolError, match="too long"):
        cmd.BIAS_SET.decode_args(b"\0" * 8)


def test_size_prefixed_types() -> None:
    body = cmd.SCAN_BUFFER_SET.encode_args({"channels": (0, 30), "pixels": 64, "lines": 64})
    assert body == struct.pack(">iiiii", 2, 0, 30, 64, 64)
    returns = cmd.SCAN_WAIT_END_OF_SCAN.encode_returns({"timed_out": 0, "file_path": "a.sxm"})
    assert returns == struct.pack(">II", 0, 5) + b"a.sxm"
    data = np.arange(6, dtype=np.float32).reshape(2, 3)
    grab = cmd.SCAN_FRAME_DATA_GRAB.encode_returns(
        {"channel_name": "Z (m)", "data": data, "scan_direction": 1})
    assert grab == (struct.pack(">i", 5) + b"Z (m)" + struct.pack(">ii", 2, 3)
                    + struct.pack(">6f", 0, 1, 2, 3, 4, 5) + struct.pack(">I", 1))
    decoded = cmd.SCAN_FRAME_DATA_GRAB.decode_returns(BodyReader(grab))
    np.testing.assert_array_equal(decoded["data"], data)


@pytest.mark.parametrize("command", list(cmd.COMMANDS.values()), ids=list(cmd.COMMANDS))
def test_every_command_round_trips(command: cmd.Command) -> None:
    def sample(kind: object) -> object:
        if isinstance(kind, cmd.Scalar):
            return 0.25 if kind.name.startswith("float") else 3
        if isinstance(kind, cmd.String):
            return "Z (m)"
        if isinstance(kind, cmd.Int32Array):
            return (0, 30)
        return np.ones((2, 2), np.float32)

    args = {f.name: sample(f.type) for f in command.args}
    body = command.encode_args(args)
    assert _equal(command.decode_args(body), args)
    returns = {f.name: sample(f.type) for f in command.returns}
    reader = BodyReader(command.encode_returns(returns) + ErrorSection().pack())
    assert _equal(command.decode_returns(reader), returns)
    assert not ErrorSection.read(reader).status


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


# -- the simulator's answers, in process ---------------------------------------------------


def _ask(name: str, body: bytes = b"") -> tuple[dict, ErrorSection]:
    async def run() -> bytes:
        simulator = Simulator(Instrument(0))
        try:
            return await simulator.handle(name, body)
        finally:
            simulator.close()

    message = asyncio.run(run())
    header = ResponseHeader.unpack(message[:HEADER_SIZE])
    assert header.command == name and header.body_size == len(message) - HEADER_SIZE
    reader = BodyReader(message[HEADER_SIZE:])
    command = cmd.COMMANDS.get(name)
    values = command.decode_returns(reader) if command else {}
    error = ErrorSection.read(reader)
    reader.expect_end()
    return values, error


def test_simulator_answers_a_good_request() -> None:
    values, error = _ask("Bias.Get")
    assert not error.status and values["bias"] == pytest.approx(1.0)


def test_simulator_answers_an_unknown_command_with_an_error() -> None:
    _, error = _ask("Bias.Teleport")
    assert error.status and "unknown command" in error.description


def test_simulator_answers_a_wrong_body_size_with_an_error() -> None:
    _values, error = _ask("Bias.Set", b"\0" * 7)
    assert error.status and "7 bytes" in error.description


def test_simulator_answers_a_value_outside_limits_with_an_error() -> None:
    _values, error = _ask("Bias.Set", struct.pack(">f", 9.0))
    assert error.status and "outside the instrument limits" in error.description
    _, error = _ask("ZCtrl.SetpntSet", struct.pack(">f", 1e-6))
    assert error.status and "setpoint" in error.description
