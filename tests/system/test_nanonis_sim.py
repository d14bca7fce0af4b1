"""The Nanonis simulator as a subprocess, driven by nanonisTCP (the field's client, which we
did not write), by this package's asyncio client and by raw sockets for bad input.

Every mapped command goes through nanonisTCP: values set are the values read back (as
float32), and a grabbed frame is the twin's own frame for the same seed and settings.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from nanonisTCP import nanonisTCP
from nanonisTCP.AutoApproach import AutoApproach
from nanonisTCP.Bias import Bias
from nanonisTCP.Current import Current
from nanonisTCP.FolMe import FolMe
from nanonisTCP.Motor import Motor
from nanonisTCP.Scan import Scan
from nanonisTCP.TipShaper import TipShaper
from nanonisTCP.ZController import ZController

from spm_bluesky.domain import limits
from spm_bluesky.nanonis import commands as cmd
from spm_bluesky.nanonis.client import ControllerStatus, NanonisClient, ScanBuffer, ScanFrame
from spm_bluesky.nanonis.protocol import (
    HEADER_SIZE,
    BodyReader,
    ErrorSection,
    NanonisError,
    ResponseHeader,
    request,
)
from spm_bluesky.twin import Frame, Instrument

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
READY = re.compile(r"spm-nanonis-sim ready host=\S+ port=(\d+) truth_port=(\d+)")
#: Seconds any socket operation in these tests may take.
TIMEOUT = 20.0
Z_RT = 30  # "Z (m)" in the real-time signal indexing (the simulator's default)


def f32(value: float) -> float:
    """``value`` as it comes back after a trip through a float32 field."""
    return float(np.float32(value))


@dataclass
class Sim:
    """A running simulator subprocess."""

    process: subprocess.Popen
    port: int
    truth_port: int
    stderr: Path

    def nanonis(self) -> nanonisTCP:
        """A nanonisTCP connection with a socket timeout, so a bad answer fails, not hangs."""
        client = nanonisTCP("127.0.0.1", self.port)
        client.s.settimeout(TIMEOUT)
        return client

    def truth(self, **request: Any) -> dict[str, Any]:
        """One request on the truth channel (JSON lines)."""
        with socket.create_connection(("127.0.0.1", self.truth_port), TIMEOUT) as s:
            s.sendall(json.dumps(request).encode() + b"\n")
            line = s.makefile("rb").readline()
        return json.loads(line)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def start_sim(tmp_path: Path) -> Iterator[Callable[..., Sim]]:
    """Factory: start ``python -m spm_bluesky.nanonis`` on a free port; stopped at the end."""
    running: list[Sim] = []

    def start(seed: int = 0, *extra: str) -> Sim:
        out = tmp_path / f"sim{len(running)}.out"
        err = tmp_path / f"sim{len(running)}.err"
        command = [sys.executable, "-m", "spm_bluesky.nanonis", "--port", "0", "--seed",
                   str(seed), "--log-level", "INFO", *extra]
        with out.open("wb") as stdout, err.open("wb") as stderr:
            process = subprocess.Popen(command, stdout=stdout, stderr=stderr, cwd=REPO_ROOT)
        deadline = time.monotonic() + 60
        while not (match := READY.search(out.read_text())):
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"simulator not ready: {err.read_text()}")
            time.sleep(0.05)
        sim = Sim(process, int(match[1]), int(match[2]), err)
        running.append(sim)
        return sim

    yield start
    for sim in running:
        sim.stop()


@pytest.fixture
def sim(start_sim: Callable[..., Sim]) -> Sim:
    return start_sim(0)


# -- every mapped command through nanonisTCP ----------------------------------------------


def test_bias_set_get(sim: Sim) -> None:
    bias = Bias(sim.nanonis())
    bias.Set(-0.35)
    assert bias.Get() == f32(-0.35)


def test_setpoint_set_get(sim: Sim) -> None:
    z = ZController(sim.nanonis())
    z.SetpntSet(42e-12)
    assert z.SetpntGet() == f32(42e-12)


def test_frame_set_get(sim: Sim) -> None:
    scan = Scan(sim.nanonis())
    scan.FrameSet(12e-9, -30e-9, 50e-9, 50e-9, 0.0)
    assert scan.FrameGet() == [f32(12e-9), f32(-30e-9), f32(50e-9), f32(50e-9), 0.0]


def test_buffer_set_get_and_pixel_coercion(sim: Sim) -> None:
    scan = Scan(sim.nanonis())
    scan.BufferSet([Z_RT], 128, 128)
    assert scan.BufferGet() == [1, [Z_RT], 128, 128]
    scan.BufferSet([0, Z_RT], 100, 96)  # the controller keeps pixels a multiple of 16
    assert scan.BufferGet() == [2, [0, Z_RT], 96, 96]


def test_speed_set_get(sim: Sim) -> None:
    scan = Scan(sim.nanonis())
    scan.FrameSet(0.0, 0.0, 20e-9, 20e-9)
    scan.SpeedSet(fwd_speed=100e-9, bwd_speed=200e-9)  # keeps the speed; ratio 2
    forward, backward, forward_time, backward_time, keep, ratio = scan.SpeedGet()
    assert (forward, backward, keep, ratio) == (f32(100e-9), f32(200e-9), 0, 2.0)
    assert forward_time == pytest.approx(0.2, rel=1e-6)
    assert backward_time == pytest.approx(0.1, rel=1e-6)
    scan.SpeedSet(fwd_line_time=0.5, speed_ratio=1.0, const_param=2)  # keeps the line time
    forward, backward, forward_time, _, keep, ratio = scan.SpeedGet()
    assert (forward_time, keep, ratio) == (f32(0.5), 1, 1.0)
    assert forward == backward == pytest.approx(40e-9, rel=1e-6)


def test_xy_set_get(sim: Sim) -> None:
    folme = FolMe(sim.nanonis())
    folme.XYPosSet(15e-9, -7.5e-9, True)
    assert folme.XYPosGet(1) == (15e-9, -7.5e-9)  # float64 both ways


def test_tip_shaper_props_set_get(sim: Sim) -> None:
    shaper = TipShaper(sim.nanonis())
    shaper.PropsSet(0.1, 2, 0.5, -2.5e-9, 0.2, 0.3, 0.04, 2e-9, 0.25, 0.06, 1)
    expected = [f32(0.1), 0, 0.5, f32(-2.5e-9), f32(0.2), f32(0.3), f32(0.04), f32(2e-9),
                0.25, f32(0.06), 1]  # 2 (false) reads back as 0
    assert shaper.PropsGet() == expected


def test_scan_frame_is_the_twins_frame(start_sim: Callable[..., Sim]) -> None:
    sim = start_sim(5)
    client = sim.nanonis()
    scan, bias, z = Scan(client), Bias(client), ZController(client)
    scan.BufferSet([0, Z_RT], 32, 32)
    scan.FrameSet(20e-9, -10e-9, 16e-9, 16e-9, 0.0)
    scan.SpeedSet(fwd_speed=80e-9, bwd_speed=80e-9, speed_ratio=1.0)
    bias.Set(0.8)
    z.SetpntSet(30e-12)
    scan.Action("start", "up")
    timed_out, _, path = scan.WaitEndOfScan(10_000)
    assert not timed_out and path == ""
    name, data, direction = scan.FrameDataGrab(Z_RT, 1)
    assert (name, data.shape, direction) == ("Z (m)", (32, 32), "up")

    twin_frame = Frame(center_x=f32(20e-9), center_y=f32(-10e-9), size=f32(16e-9), pixels=32,
                       speed=f32(80e-9), bias=f32(0.8), setpoint=f32(30e-12))
    expected = Instrument(5).scan(twin_frame)
    np.testing.assert_array_equal(data, expected)  # same rows, same order: row 0 first
    assert not np.array_equal(data, np.flipud(expected))
    # Units: metres of z extension (about 100 nm after an approach), sub-nm corrugation.
    assert 50e-9 < float(data.mean()) < limits.Z_RANGE
    assert 1e-12 < float(data.std()) < 5e-9
    name, current, _ = scan.FrameDataGrab(0, 1)
    assert name == "Current (A)" and np.allclose(current, f32(30e-12))
    assert sim.truth(op="state")["frame_count"] == 1


def test_scan_status_and_wait_follow_the_twins_timing(start_sim: Callable[..., Sim]) -> None:
    sim = start_sim(0, "--time-scale", "0.05")
    scan = Scan(sim.nanonis())
    scan.BufferSet([Z_RT], 32, 32)
    scan.FrameSet(0.0, 0.0, 10e-9, 10e-9)
    scan.SpeedSet(fwd_speed=80e-9, bwd_speed=80e-9, speed_ratio=1.0)
    started = time.monotonic()
    scan.Action("start", "up")  # 32 lines x 0.25 s = 8 simulated s = 0.4 s at 0.05
    assert scan.StatusGet() is True
    assert scan.WaitEndOfScan(20)[0] is True  # timed out: the frame takes longer
    assert scan.WaitEndOfScan(10_000)[0] is False
    assert time.monotonic() - started >= 0.35
    assert scan.StatusGet() is False
    assert sim.truth()["clock"] == pytest.approx(8.0)


def test_pulse_tip_shaper_withdraw_motor_and_approach(sim: Sim) -> None:
    client = sim.nanonis()
    folme, bias, shaper = FolMe(client), Bias(client), TipShaper(client)
    z, current, motor, approach = ZController(client), Current(client), Motor(client), \
        AutoApproach(client)
    assert z.OnOffGet() == 1
    assert z.ZPosGet() == f32(Instrument(0).z)
    assert current.Get() == f32(Frame().setpoint)

    folme.XYPosSet(5e-9, 5e-9, True)
    bias.Pulse(0.1, 3.0, z_hold=1, rel_abs=2, wait_until_done=True)
    assert sim.truth()["action_count"] == 1
    shaper.PropsSet(Tip_lift=-1e-9)
    shaper.Start(1, -1)
    state = sim.truth()
    assert state["action_count"] == 2 and not state["crashed"]  # seed 0 does not crash here

    z.Withdraw(1, -1)
    assert z.OnOffGet() == 0
    assert z.ZPosGet() == f32(limits.Z_RANGE)
    assert current.Get() == 0.0
    motor.StartMove("X+", 100, wait_until_finished=True, group=1)
    assert sim.truth()["area_index"] == 1
    approach.Open()
    approach.OnOffSet(1)
    deadline = time.monotonic() + TIMEOUT
    while approach.OnOffGet() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert z.OnOffGet() == 1
    # Withdraw, motor step and approach are the twin's own move to a fresh area.
    twin = Instrument(0)
    twin.pulse(5e-9, 5e-9, 3.0, f32(0.1))
    twin.dip(5e-9, 5e-9, f32(1e-9))
    twin.move_area()
    state = sim.truth()
    assert state["contact"] is True
    assert (state["clock"], state["z"], state["area_index"], state["tip_class"]) == (
        twin.clock, twin.z, twin.area_index, twin.tip_class.value)


def test_current_get_is_the_setpoint_in_contact(sim: Sim) -> None:
    client = sim.nanonis()
    z, current = ZController(client), Current(client)
    z.SetpntSet(80e-12)
    assert current.Get() == f32(80e-12)  # the feedback holds the current at the setpoint
    z.Withdraw(1, -1)
    assert current.Get() == 0.0  # out of tunnelling range
    AutoApproach(client).OnOffSet(1)
    deadline = time.monotonic() + TIMEOUT
    while AutoApproach(client).OnOffGet() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert current.Get() == f32(80e-12)


def test_refused_commands_raise_in_nanonistcp(sim: Sim) -> None:
    client = sim.nanonis()
    with pytest.raises(Exception, match="outside the instrument limits"):
        Bias(client).Set(9.0)
    assert Bias(client).Get() == 1.0  # unchanged, and the connection still serves
    with pytest.raises(Exception, match="in tunnelling range"):
        Motor(client).StartMove("X+", 10)  # not withdrawn


# -- this package's asyncio client --------------------------------------------------------


def test_asyncio_client_round_trips_and_errors(sim: Sim) -> None:
    async def run() -> None:
        async with NanonisClient("127.0.0.1", sim.port, timeout=TIMEOUT) as client:
            await client.bias_set(0.25)
            assert await client.bias_get() == 0.25
            await client.frame_set(ScanFrame(0.0, 0.0, 12e-9, 12e-9))
            await client.buffer_set(ScanBuffer((Z_RT,), 16, 16))
            assert await client.buffer_get() == ScanBuffer((Z_RT,), 16, 16)
            await client.speed_set(60e-9)
            assert (await client.speed_get()).forward_speed == f32(60e-9)
            await client.scan_action(cmd.ScanAction.START)
            assert await client.wait_end_of_scan(10_000)
            grab = await client.frame_data_grab(Z_RT)
            assert grab.data.shape == (16, 16) and grab.scan_up
            with pytest.raises(NanonisError) as refused:
                await client.setpoint_set(1.0)
            assert refused.value.description.startswith("setpoint=1.0 A is outside")
            assert await client.setpoint_get() == f32(Frame().setpoint)

    asyncio.run(run())


def test_asyncio_client_pipelines_requests_on_one_connection(sim: Sim) -> None:
    """``call_many``: the requests go out at once, every response is read in order, and a
    refused one raises after all were read, so the connection stays in step."""
    async def run() -> None:
        async with NanonisClient("127.0.0.1", sim.port, timeout=TIMEOUT) as client:
            await client.setpoint_set(70e-12)
            status = await client.status()
            assert status == ControllerStatus(True, f32(Instrument(0).z), f32(70e-12))
            with pytest.raises(NanonisError, match=r"Bias\.Set: .*outside"):
                await client.call_many((cmd.BIAS_SET, {"bias": 9.0}),
                                       (cmd.BIAS_SET, {"bias": 0.5}),
                                       (cmd.BIAS_GET, {}))
            assert await client.bias_get() == 0.5  # the later ones ran; still in step
            await client.buffer_set(ScanBuffer((Z_RT,), 16, 16))
            acquired = await client.acquire(Z_RT, 10_000)
            assert acquired is not None and sim.truth()["frame_count"] == 1
            grabbed, status = acquired
            assert grabbed.data.shape == (16, 16) and grabbed.scan_up
            assert status == ControllerStatus(True, f32(Instrument(0).z), f32(70e-12))

    asyncio.run(run())


def test_a_frame_longer_than_the_wait_is_waited_for_and_grabbed(
        start_sim: Callable[..., Sim]) -> None:
    sim = start_sim(4, "--time-scale", "0.05")

    async def run() -> None:
        async with NanonisClient("127.0.0.1", sim.port, timeout=TIMEOUT) as client:
            await client.buffer_set(ScanBuffer((Z_RT,), 32, 32))
            await client.frame_set(ScanFrame(0.0, 0.0, 10e-9, 10e-9))
            await client.speed_set(80e-9)  # 8 simulated s = 0.4 s at 0.05
            assert await client.acquire(Z_RT, 20) is None  # not done within 20 ms
            while not await client.wait_end_of_scan(1000):
                pass
            grabbed, status = await client.grab_with_status(Z_RT)
            expected = Instrument(4).scan(Frame(size=f32(10e-9), pixels=32, speed=f32(80e-9)))
            np.testing.assert_array_equal(grabbed.data, expected)
            assert status.feedback_on and status.current == f32(Frame().setpoint)

    asyncio.run(run())


# -- bad input: each gets an error or a closed connection; the simulator keeps serving ------


def _connect(sim: Sim) -> socket.socket:
    return socket.create_connection(("127.0.0.1", sim.port), TIMEOUT)


def _exchange(s: socket.socket, message: bytes) -> tuple[str, BodyReader]:
    s.sendall(message)
    header = ResponseHeader.unpack(_recv(s, HEADER_SIZE))
    return header.command, BodyReader(_recv(s, header.body_size))


def _recv(s: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = s.recv(size - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {size} bytes")
        data += chunk
    return data


def _bias(s: socket.socket) -> float:
    name, reader = _exchange(s, request("Bias.Get"))
    value = cmd.BIAS_GET.decode_returns(reader)["bias"]
    assert name == "Bias.Get" and not ErrorSection.read(reader).status
    return float(value)


def _closed(s: socket.socket) -> bool:
    s.settimeout(TIMEOUT)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True


def test_wrong_body_size_gets_an_error_and_the_connection_goes_on(sim: Sim) -> None:
    with _connect(sim) as s:
        name, reader = _exchange(s, request("Bias.Set", b"\0" * 6))
        cmd.BIAS_SET.decode_returns(reader)
        error = ErrorSection.read(reader)
        assert name == "Bias.Set" and error.status and "6 bytes" in error.description
        assert _bias(s) == 1.0


def test_unknown_command_gets_an_error(sim: Sim) -> None:
    with _connect(sim) as s:
        name, reader = _exchange(s, request("Scan.Teleport", b"\0" * 4))
        error = ErrorSection.read(reader)
        assert name == "Scan.Teleport" and error.status and "unknown" in error.description
        reader.expect_end()
        assert _bias(s) == 1.0


def test_value_outside_limits_gets_an_error(sim: Sim) -> None:
    with _connect(sim) as s:
        _, reader = _exchange(s, request("FolMe.XYPosSet", struct.pack(">ddI", 1e-6, 0.0, 1)))
        error = ErrorSection.read(reader)
        assert error.status and "outside the instrument limits" in error.description
        _, reader = _exchange(s, request("FolMe.XYPosGet", struct.pack(">I", 0)))
        assert cmd.FOLME_XYPOS_GET.decode_returns(reader) == {"x": 0.0, "y": 0.0}


def test_half_a_header_then_disconnect(sim: Sim) -> None:
    with _connect(sim) as s:
        s.sendall(request("Bias.Get")[:17])
    with _connect(sim) as s:
        s.sendall(request("Bias.Set", struct.pack(">f", 0.5))[:HEADER_SIZE + 2])
    with _connect(sim) as s:
        assert _bias(s) == 1.0  # the half-sent Bias.Set did nothing


def test_undecodable_header_closes_the_connection(sim: Sim) -> None:
    with _connect(sim) as s:
        s.sendall(b"\xff" * HEADER_SIZE)
        assert _closed(s)
    with _connect(sim) as s:
        assert _bias(s) == 1.0


def test_no_response_flag_means_no_response(sim: Sim) -> None:
    with _connect(sim) as s:
        s.sendall(request("Bias.Set", struct.pack(">f", 0.5), send_response=False))
        assert _bias(s) == 0.5  # the next bytes are Bias.Get's response


def test_more_connections_than_allowed(sim: Sim) -> None:
    allowed = [_connect(sim) for _ in range(4)]
    try:
        for s in allowed:
            assert _bias(s) == 1.0
        with _connect(sim) as extra:
            assert _closed(extra)
        for s in allowed:
            assert _bias(s) == 1.0
    finally:
        allowed.pop().close()
    deadline = time.monotonic() + TIMEOUT
    while True:  # the freed place is taken once the server has seen the close
        with _connect(sim) as again:
            try:
                assert _bias(again) == 1.0
                break
            except ConnectionError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
    for s in allowed:
        s.close()


# -- the truth channel ---------------------------------------------------------------------


def test_truth_channel_reports_and_controls_the_twin(sim: Sim) -> None:
    state = sim.truth(op="state")
    assert state["ok"] and state["seed"] == 0 and state["tip_class"] == "good"
    assert sim.truth(op="degrade")["tip_class"] != "good"
    assert sim.truth(op="fault", fault="crash")["crashed"] is True
    assert sim.truth(op="nonsense")["ok"] is False
    with _connect(sim) as s:
        _name, reader = _exchange(s, request("ZCtrl.OnOffGet"))
        assert cmd.ZCTRL_ONOFF_GET.decode_returns(reader) == {"on": 0}
