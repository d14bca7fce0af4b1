"""The IOC's Nanonis backend for real: the Nanonis simulator as a subprocess, the IOC as a
subprocess behind it (``spm-ioc --backend nanonis``), clients over Channel Access.

Checked here: the PV contract is served (without ``Sim:*`` on a bare controller), a frame
is the twin's frame for the float32 settings the protocol carries, limits are enforced at
the IOC, a refused command is a refused put with the controller's message in the IOC log,
and a lost controller disconnects the PVs until it is back, then gets the IOC's settings
again.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator

import bluesky.plan_stubs as bps
import numpy as np
import pytest
from caproto import ChannelType
from caproto.threading.client import Context
from nanonisTCP.Current import Current
from ophyd_async.core import init_devices

from spm_bluesky.devices.stm import STM
from spm_bluesky.domain import limits
from spm_bluesky.twin import Frame, Instrument
from tests.fixtures_ioc import PORTS, READY_PREFIX, REPO_ROOT, IocLauncher, IocProcess
from tests.system import test_nanonis_sim
from tests.system.test_nanonis_sim import Sim, f32

pytestmark = pytest.mark.integration

start_sim = test_nanonis_sim.start_sim  # the simulator fixture, shared

#: Seconds a CA operation in these tests may take.
TIMEOUT = 10.0


def launch_nanonis_ioc(launcher: IocLauncher, sim: Sim, truth: bool = True,
                       prefix: str | None = None, port: int | None = None) -> IocProcess:
    """Start ``spm-ioc --backend nanonis`` behind ``sim`` on a free pool port (or ``port``);
    registered with ``launcher`` so that the pool stays consistent and it is stopped."""
    launcher.running = [ioc for ioc in launcher.running if ioc.process.poll() is None]
    if port is None:
        port = next(p for p in PORTS if p not in {ioc.port for ioc in launcher.running})
    prefix = prefix or f"N{uuid.uuid4().hex[:8]}:"
    out = launcher.log_dir / f"{prefix[:-1]}-{port}.out"
    err = launcher.log_dir / f"{prefix[:-1]}-{port}.err"
    command = [sys.executable, "-m", "spm_bluesky.ioc", "--prefix", prefix, "--port", str(port),
               "--backend", "nanonis", "--nanonis", f"127.0.0.1:{sim.port}",
               "--log-level", "WARNING"]
    if truth:
        command += ["--truth", f"127.0.0.1:{sim.truth_port}"]
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, cwd=REPO_ROOT,
                                   env=dict(os.environ))
    ioc = IocProcess(prefix, process.pid, process, port, err)
    launcher.running.append(ioc)
    deadline = time.monotonic() + 60
    while READY_PREFIX not in out.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            ioc.stop()
            raise RuntimeError(f"Nanonis IOC not ready: {ioc.log()}")
        time.sleep(0.05)
    return ioc


@pytest.fixture
def nanonis_ioc(_ioc_launcher: IocLauncher) -> Iterator[Callable[..., IocProcess]]:
    """Factory ``nanonis_ioc(sim, truth=True) -> IocProcess``; stopped after the test."""
    started: list[IocProcess] = []

    def start(sim: Sim, truth: bool = True) -> IocProcess:
        ioc = launch_nanonis_ioc(_ioc_launcher, sim, truth)
        started.append(ioc)
        return ioc

    yield start
    for ioc in started:
        ioc.stop()


@pytest.fixture
def ca() -> Iterator[Context]:
    context = Context()
    yield context
    context.disconnect()


def pv(ca: Context, ioc: IocProcess, name: str):
    (channel,) = ca.get_pvs(ioc.pv(name), timeout=TIMEOUT)
    channel.wait_for_connection(timeout=TIMEOUT)
    return channel


def put(ca: Context, ioc: IocProcess, name: str, value) -> bool:
    """Put with a callback; True if the IOC accepted it."""
    data_type = ChannelType.STRING if isinstance(value, str) else None
    response = pv(ca, ioc, name).write([value], wait=True, timeout=TIMEOUT,
                                       data_type=data_type)
    return response.status.success == 1


def get(ca: Context, ioc: IocProcess, name: str):
    data = pv(ca, ioc, name).read(timeout=TIMEOUT).data
    return data if len(data) > 1 else data[0]


def wait_log(ioc: IocProcess, text: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while text not in ioc.log():
        assert time.monotonic() < deadline, f"{text!r} not in the IOC log:\n{ioc.log()}"
        time.sleep(0.05)


def test_bare_controller_serves_the_contract_without_sim_pvs(start_sim, nanonis_ioc,
                                                             ca) -> None:
    sim = start_sim(7)
    ioc = nanonis_ioc(sim, truth=False)
    assert get(ca, ioc, "Status:Contact") == 1
    assert put(ca, ioc, "Scan:Acquire", 1)
    assert get(ca, ioc, "Scan:FrameCounter") == 1
    assert get(ca, ioc, "Tip:ActionCounter") == 0 and get(ca, ioc, "Coarse:AreaIndex") == 0
    (missing,) = ca.get_pvs(ioc.pv("Sim:TipState"), timeout=1.0)
    with pytest.raises(TimeoutError):
        missing.wait_for_connection(timeout=2.0)
    # The simulator made the frame: its truth channel counts it.
    assert sim.truth()["frame_count"] == 1


def test_frame_is_the_twins_frame_for_the_float32_settings(start_sim, nanonis_ioc,
                                                           ca) -> None:
    sim = start_sim(11)
    ioc = nanonis_ioc(sim)
    settings = {"Scan:Pixels": 32, "Scan:Size": 20e-9, "Scan:CenterX": 50e-9,
                "Scan:CenterY": -40e-9, "Scan:Speed": 150e-9, "Scan:Bias": 0.8,
                "Scan:Setpoint": 30e-12}
    for name, value in settings.items():
        assert put(ca, ioc, name, value), name
    assert put(ca, ioc, "Scan:Acquire", 1)
    image = np.asarray(get(ca, ioc, "Scan:Image"), np.float32)
    assert image.shape == (32 * 32,)

    twin = Instrument(11)
    expected = twin.scan(Frame(center_x=f32(50e-9), center_y=f32(-40e-9), size=f32(20e-9),
                               pixels=32, speed=f32(150e-9), bias=f32(0.8),
                               setpoint=f32(30e-12)))
    np.testing.assert_array_equal(image.reshape(32, 32), expected)  # same rows, same order
    # Heights in metres: a z extension within the range, atomic-scale corrugation.
    assert 0 < float(expected.mean()) < limits.Z_RANGE
    assert 1e-11 < float(np.ptp(expected)) < 1e-8
    assert get(ca, ioc, "Status:Clock") == pytest.approx(twin.clock, rel=1e-6)
    tip_state = pv(ca, ioc, "Sim:TipState").read(data_type=ChannelType.STRING, timeout=TIMEOUT)
    assert tip_state.data[0] == twin.tip_class.value.encode()


def test_limits_at_the_ioc_and_refusals_from_the_controller(start_sim, nanonis_ioc,
                                                            ca) -> None:
    sim = start_sim(3)
    ioc = nanonis_ioc(sim)
    # The IOC's own limits: the value is not applied and never reaches the controller.
    assert not put(ca, ioc, "Scan:Size", 2 * limits.SCAN_SIZE.high)
    assert not put(ca, ioc, "Scan:Bias", 0.001)
    assert get(ca, ioc, "Scan:Size") == pytest.approx(Frame().size)
    # A pixel count the IOC allows but a Nanonis does not (not a multiple of 16).
    assert not put(ca, ioc, "Scan:Pixels", 40)
    assert get(ca, ioc, "Scan:Pixels") == Frame().pixels
    wait_log(ioc, "a multiple of 16")
    # A command the controller refuses: a pulse without tunnelling contact.
    assert put(ca, ioc, "Coarse:Withdraw", 1) and get(ca, ioc, "Status:Contact") == 0
    assert not put(ca, ioc, "Tip:Pulse", 1)
    wait_log(ioc, "Bias.Pulse: the tip is not in tunnelling contact")
    assert get(ca, ioc, "Tip:ActionCounter") == 0
    # ... and the IOC goes on serving: approach, pulse, dip and an area move.
    assert put(ca, ioc, "Coarse:Approach", 1) and get(ca, ioc, "Status:Contact") == 1
    assert put(ca, ioc, "Tip:ActionX", 10e-9) and put(ca, ioc, "Tip:Pulse", 1)
    assert put(ca, ioc, "Tip:DipDepth", 1e-9) and put(ca, ioc, "Tip:Dip", 1)
    assert put(ca, ioc, "Coarse:MoveArea", 1)
    truth = sim.truth()
    assert get(ca, ioc, "Tip:ActionCounter") == truth["action_count"] == 2
    assert get(ca, ioc, "Coarse:AreaIndex") == truth["area_index"] == 1
    assert get(ca, ioc, "Status:Contact") == int(truth["contact"]) == 1


def test_crash_from_a_sim_fault_is_reported_and_recovered(start_sim, nanonis_ioc, ca) -> None:
    sim = start_sim(5)
    ioc = nanonis_ioc(sim)
    assert put(ca, ioc, "Sim:Fault", "crash")
    assert get(ca, ioc, "Status:Crashed") == 1 and get(ca, ioc, "Status:CrashCount") == 1
    assert get(ca, ioc, "Status:Contact") == 0 and sim.truth()["crashed"]
    assert put(ca, ioc, "Sim:Fault", "none") and put(ca, ioc, "Coarse:Approach", 1)
    assert get(ca, ioc, "Status:Crashed") == 0 and get(ca, ioc, "Status:Contact") == 1


def test_lost_controller_disconnects_the_pvs_until_it_is_back(start_sim, nanonis_ioc,
                                                              ca) -> None:
    sim = start_sim(9)
    ioc = nanonis_ioc(sim)
    assert put(ca, ioc, "Scan:Pixels", 128) and put(ca, ioc, "Scan:Acquire", 1)
    clock = pv(ca, ioc, "Status:Clock")
    assert clock.connected

    sim.process.kill()
    sim.process.wait()
    deadline = time.monotonic() + TIMEOUT
    while clock.connected:
        assert time.monotonic() < deadline, "PVs still served after the kill"
        time.sleep(0.05)
    wait_log(ioc, "lost: PVs disconnected")
    time.sleep(1.0)
    assert not clock.connected  # not served while the controller is away

    # The simulator comes back on its ports with its seed: a fresh controller.
    start_sim(9, "--port", str(sim.port), "--truth-port", str(sim.truth_port))
    deadline = time.monotonic() + 30
    while not clock.connected:
        assert time.monotonic() < deadline, "PVs not served again"
        time.sleep(0.05)
    # The IOC's settings went to the new controller: a frame has the pixels put before.
    assert get(ca, ioc, "Scan:Pixels") == 128
    assert put(ca, ioc, "Scan:Acquire", 1)
    assert len(get(ca, ioc, "Scan:Image")) == 128 * 128
    assert get(ca, ioc, "Scan:FrameCounter") == 2


def test_status_current_is_served_by_both_backends(RE, start_sim, nanonis_ioc, start_ioc,
                                                   ca) -> None:
    """``Status:Current``: the setpoint while in tunnelling range, 0 withdrawn; from the
    twin's model on the twin IOC, from ``Current.Get`` on the Nanonis IOC; read over CA
    and through the STM device's ``status.current``."""
    sim = start_sim(2)
    iocs = {"twin": start_ioc(2), "nanonis": nanonis_ioc(sim, truth=False)}
    for name, ioc in iocs.items():
        assert get(ca, ioc, "Status:Current") == pytest.approx(f32(Frame().setpoint),
                                                                rel=1e-6), name
        assert put(ca, ioc, "Scan:Setpoint", 55e-12)
        assert get(ca, ioc, "Status:Current") == pytest.approx(55e-12, rel=1e-6), name
        with init_devices():
            stm = STM(ioc.prefix, name=f"stm_{name}", sim=False)
        read = RE(bps.rd(stm.status.current))
        assert read.plan_result == pytest.approx(55e-12, rel=1e-6), name
        assert stm.status.current.name not in RE(bps.read(stm.status)).plan_result  # not stored
        assert put(ca, ioc, "Coarse:Withdraw", 1)
        assert get(ca, ioc, "Status:Current") == 0.0, name
        assert put(ca, ioc, "Coarse:Approach", 1)
        assert get(ca, ioc, "Status:Current") == pytest.approx(55e-12, rel=1e-6), name
    # The Nanonis IOC's value is the controller's: its Current.Get, through nanonisTCP.
    assert Current(sim.nanonis()).Get() == f32(55e-12)
