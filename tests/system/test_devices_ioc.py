"""Integration: the real IOC subprocess (tests/fixtures_ioc.py), the STM device over Channel
Access and the plans in a real RunEngine.

The IOC's PVs are checked with caproto's own client, independent of ophyd-async/aioca, and
the images against an in-process twin with the same seed fed the same frames.
"""

from __future__ import annotations

import time

import bluesky.plan_stubs as bps
import numpy as np
import pytest
from bluesky.utils import FailedStatus
from event_model import DocumentNames, schema_validators
from ophyd_async.core import init_devices

from spm_bluesky.devices.stm import MONITOR_LAG_TIMEOUT, STM, PutRefused
from spm_bluesky.domain.actions import ACTIONS_BY_NAME
from spm_bluesky.domain.area import AreaMask
from spm_bluesky.plans import acquire_image, approach, move_area, survey, tip_action, withdraw
from spm_bluesky.twin import Frame, Instrument, TipClass
from tests.ca_sync import read as ca_read

pytestmark = pytest.mark.integration

#: The IOC's start-up imaging settings are the twin's default frame.
DEFAULT_FRAME = Frame()


def pv_value(ioc, name: str):
    """The IOC's value of PV ``name`` read with caproto's client (scalar or array)."""
    data = ca_read(ioc.pv(name), timeout=20).data
    return data[0] if len(data) == 1 else np.asarray(data)


def pv_snapshot(ioc, names) -> dict[str, tuple]:
    """Value and timestamp of each PV: a put, even of the same value, moves the timestamp."""
    snapshot = {}
    for name in names:
        response = ca_read(ioc.pv(name), data_type="time", timeout=20)
        snapshot[name] = (tuple(np.atleast_1d(response.data).tolist()),
                          response.metadata.timestamp)
    return snapshot


def connect_stm(ioc, sim: bool = True) -> STM:
    with init_devices():
        stm = STM(ioc.prefix, sim=sim)
    return stm


def events(docs, stream: str = "primary") -> list[dict]:
    descriptors = {d["uid"] for n, d in docs if n == "descriptor" and d["name"] == stream}
    return [d for n, d in docs if n == "event" and d["descriptor"] in descriptors]


def test_survey_reads_the_images_the_twin_makes_where_the_spiral_says(
        RE, docs, start_ioc, tmp_path):
    seed = 11
    ioc = start_ioc(seed=seed)
    stm = connect_stm(ioc)
    mask_path = tmp_path / "mask.json"
    result = RE(survey(stm, 5, size=10e-9, pixels=48, mask_path=str(mask_path),
                       session_uid="it-session"))
    assert result.plan_result == 5
    for name, doc in docs:
        schema_validators[DocumentNames(name)].validate(doc)
    start = docs[0][1]
    assert start["plan_name"] == "survey" and start["session_uid"] == "it-session"
    assert start["twin_seed"] == seed
    [descriptor] = [d for n, d in docs if n == "descriptor" and d["name"] == "primary"]
    key = descriptor["data_keys"]["stm-scan-image"]
    assert key["shape"] == [48, 48] and key["dtype_numpy"] == "<f4" and key["units"] == "m"
    assert descriptor["configuration"]["stm-scan"]["data"]["stm-scan-bias"] == \
        pytest.approx(DEFAULT_FRAME.bias)

    twin = Instrument(seed)  # the same seed, fed the same frames, scans the same images
    spiral = [(0, 0), (0, -1), (-1, -1), (-1, 0), (-1, 1)]
    primary = events(docs)
    assert len(primary) == 5
    clocks, counters = [], []
    for event, (i, j) in zip(primary, spiral, strict=True):
        data = event["data"]
        x, y = data["stm-scan-center_x"], data["stm-scan-center_y"]
        assert (x, y) == pytest.approx((i * 10e-9, j * 10e-9), abs=1e-15)
        image = data["stm-scan-image"]
        assert isinstance(image, np.ndarray)
        assert image.shape == (48, 48) and image.dtype == np.float32
        expected = twin.scan(Frame(center_x=x, center_y=y, size=10e-9, pixels=48,
                                   speed=DEFAULT_FRAME.speed, bias=DEFAULT_FRAME.bias,
                                   setpoint=DEFAULT_FRAME.setpoint))
        np.testing.assert_array_equal(image, expected)
        assert data["stm-scan-clock"] == pytest.approx(twin.clock)
        clocks.append(data["stm-scan-clock"])
        counters.append(data["stm-scan-frame_counter"])
    assert counters == [1, 2, 3, 4, 5]
    assert [e["data"]["stm-sim-tip_state"] for e in events(docs, "truth")] == ["good"] * 5
    # The IOC holds the last frame and position; the mask file holds the five cells.
    np.testing.assert_array_equal(pv_value(ioc, "Scan:Image").reshape(48, 48),
                                  primary[-1]["data"]["stm-scan-image"])
    assert pv_value(ioc, "Scan:CenterX") == pytest.approx(-10e-9)
    assert pv_value(ioc, "Scan:FrameCounter") == 5
    mask = AreaMask.load(mask_path)
    assert mask.free_cells == 85 * 85 - 5
    assert all(not mask.is_free(i * 10e-9, j * 10e-9) for i, j in spiral)


def test_tip_and_coarse_plans_complete_and_move_the_ioc_counters(RE, docs, start_ioc):
    ioc = start_ioc(seed=3)
    stm = connect_stm(ioc)
    clock = pv_value(ioc, "Status:Clock")

    RE(tip_action(stm, "pulse_-2.5V", 40e-9, -20e-9))
    assert pv_value(ioc, "Tip:ActionCounter") == 1
    assert pv_value(ioc, "Tip:ActionX") == pytest.approx(40e-9)
    assert pv_value(ioc, "Tip:PulseBias") == pytest.approx(-2.5)
    [event] = events(docs, "action")
    assert event["data"]["stm-tip-action_counter"] == 1
    assert event["data"]["stm-tip-action_name"] == "pulse_-2.5V"
    assert pv_value(ioc, "Status:Clock") > clock

    RE(tip_action(stm, "dip_0.8nm", -60e-9, 10e-9))
    assert pv_value(ioc, "Tip:ActionCounter") == 2
    assert pv_value(ioc, "Tip:DipDepth") == pytest.approx(ACTIONS_BY_NAME["dip_0.8nm"].depth)

    RE(withdraw(stm))
    assert pv_value(ioc, "Status:Contact") == 0
    started = time.monotonic()
    with pytest.raises(FailedStatus) as refused:  # the IOC refuses: no tunnelling contact
        RE(tip_action(stm, "pulse_+2.5V", 0.0, 0.0))
    assert isinstance(refused.value.__cause__, PutRefused)
    assert time.monotonic() - started < MONITOR_LAG_TIMEOUT, "refused at once, no time-out"
    assert docs[-1][0] == "stop" and docs[-1][1]["exit_status"] == "fail"
    assert pv_value(ioc, "Tip:ActionCounter") == 2
    RE(approach(stm))
    assert pv_value(ioc, "Status:Contact") == 1
    clock = pv_value(ioc, "Status:Clock")
    RE(move_area(stm, session_uid="s"))
    assert pv_value(ioc, "Coarse:AreaIndex") == 1
    assert pv_value(ioc, "Status:Contact") == 1
    assert pv_value(ioc, "Status:Clock") > clock
    before, after = events(docs)[-2:]
    assert before["data"]["stm-status-area_index"] == 0
    assert after["data"]["stm-status-area_index"] == 1
    assert [d["plan_name"] for n, d in docs if n == "start"] == [
        "tip_action", "tip_action", "withdraw", "tip_action", "approach", "move_area"]
    assert [d["exit_status"] for n, d in docs if n == "stop"] == [
        "success", "success", "success", "fail", "success", "success"]

    # The twin's sim part: inject a fault, recover, degrade the tip on purpose.
    RE(bps.mv(stm.sim.fault, "lose_contact"))
    assert pv_value(ioc, "Status:Contact") == 0
    RE(approach(stm))
    assert pv_value(ioc, "Status:Contact") == 1
    assert RE(bps.rd(stm.sim.tip_state)).plan_result in {c.value for c in TipClass}
    RE(bps.trigger(stm.sim.degrade, wait=True))
    assert RE(bps.rd(stm.sim.tip_state)).plan_result != TipClass.GOOD.value


WATCHED = ["Scan:FrameCounter", "Tip:ActionCounter", "Coarse:AreaIndex", "Status:Clock",
           "Scan:CenterX", "Scan:CenterY", "Scan:Size", "Scan:Pixels", "Scan:Bias",
           "Scan:Setpoint", "Scan:Speed", "Tip:ActionX", "Tip:ActionY", "Tip:PulseBias",
           "Tip:PulseTime", "Tip:DipDepth", "Sim:TimeScale", "Sim:Fault"]

BAD_PLANS = [
    # The IOC alone would refuse only the centre, after the plan had written the pixels.
    lambda s: acquire_image(s, 0.0, 399e-9, size=20e-9),
    lambda s: acquire_image(s, 0.0, 0.0, size=10e-9, pixels=64, bias=0.005),
    lambda s: survey(s, 0),
    lambda s: survey(s, 3, size=250e-9),
    lambda s: survey(s, 3, pixels=2000),
    lambda s: survey(s, 3, speed=5e-6),
    lambda s: tip_action(s, "pulse_+12.0V", 0.0, 0.0),
    lambda s: tip_action(s, "dip_1.0nm", 420e-9, 0.0),
]


def test_bad_parameters_are_refused_before_any_pv_is_written(RE, docs, start_ioc):
    ioc = start_ioc()  # its own IOC: the session one stays as the fixture promises
    stm = connect_stm(ioc)
    RE(acquire_image(stm, 0.0, 0.0, pixels=16))  # a known state, and proof the IOC works
    docs.clear()
    before = pv_snapshot(ioc, WATCHED)
    for make_plan in BAD_PLANS:
        with pytest.raises(ValueError):
            RE(make_plan(stm))
    assert not docs, "no run may start"
    assert pv_snapshot(ioc, WATCHED) == before


def test_device_without_sim_part_drives_the_ioc(RE, docs, start_ioc):
    ioc = start_ioc()
    stm = connect_stm(ioc, sim=False)
    counter = pv_value(ioc, "Scan:FrameCounter")
    RE(acquire_image(stm, 30e-9, 30e-9, size=5e-9, pixels=24))
    [event] = events(docs)
    assert event["data"]["stm-scan-image"].shape == (24, 24)
    assert event["data"]["stm-scan-frame_counter"] == counter + 1
    assert "twin_seed" not in docs[0][1] and not events(docs, "truth")
    # A put the IOC refuses fails loudly (ophyd-async's plain SignalRW would report success).
    with pytest.raises(FailedStatus) as refused:
        RE(bps.mv(stm.scan.center_x, 1e-6))
    assert isinstance(refused.value.__cause__, PutRefused)
    assert pv_value(ioc, "Scan:CenterX") == pytest.approx(30e-9)
