"""Fast tests of the devices and plans in ophyd-async mock mode, with a real RunEngine.

Mock-mode callbacks stand in for the IOC (counters advance, images appear); the plan logic,
the spiral order, the mask persistence and the parameter checks are the real code.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math

import bluesky.plan_stubs as bps
import numpy as np
import pytest
from bluesky_queueserver.manager import profile_ops
from ophyd_async.core import (
    SignalW,
    callback_on_mock_put,
    get_mock_put,
    init_devices,
    set_mock_value,
    walk_devices,
)

import spm_bluesky.plans
from spm_bluesky.devices.stm import STM, PutRefused
from spm_bluesky.domain import limits
from spm_bluesky.domain.actions import ACTIONS_BY_NAME
from spm_bluesky.domain.area import AreaMask
from spm_bluesky.plans import acquire_image, approach, move_area, survey, tip_action, withdraw

SEED = 42


class FakeController:
    """Mock callbacks that behave like the IOC: frames appear, counters advance.

    Each image is filled with its frame number so a test can tell frames apart.
    """

    def __init__(self, stm: STM) -> None:
        self.stm = stm
        self.frames = 0
        self.clock = 0.0
        self.area = 0
        callback_on_mock_put(stm.scan.acquire, self._acquire)
        callback_on_mock_put(stm.tip.pulse.command, self._action)
        callback_on_mock_put(stm.tip.dip.command, self._action)
        callback_on_mock_put(stm.coarse.approach.command, self._contact(1))
        callback_on_mock_put(stm.coarse.withdraw.command, self._contact(0))
        callback_on_mock_put(stm.coarse.move_area.command, self._move_area)
        for signal, value in ((stm.scan.pixels, 64), (stm.scan.size, 10e-9),
                              (stm.scan.speed, 80e-9), (stm.scan.bias, 1.0),
                              (stm.scan.setpoint, 25e-12), (stm.status.contact, 1)):
            set_mock_value(signal, value)
        if stm.simulated:
            set_mock_value(stm.sim.seed, SEED)
            set_mock_value(stm.sim.tip_state, "good")

    def _tick(self, seconds: float) -> None:
        self.clock += seconds
        set_mock_value(self.stm.scan.clock, self.clock)
        set_mock_value(self.stm.status.clock, self.clock)

    async def _acquire(self, value: int) -> None:
        n = await self.stm.scan.pixels.get_value()
        self.frames += 1
        set_mock_value(self.stm.scan.image, np.full(n * n, self.frames, dtype=np.float32))
        self._tick(12.8)
        set_mock_value(self.stm.scan.frame_counter, self.frames)

    async def _action(self, value: int) -> None:
        count = await self.stm.tip.action_counter.get_value()
        self._tick(0.3)
        set_mock_value(self.stm.tip.action_counter, count + 1)

    def _contact(self, contact: int):
        def put(value: int) -> None:
            set_mock_value(self.stm.status.contact, contact)
        return put

    def _move_area(self, value: int) -> None:
        self.area += 1
        set_mock_value(self.stm.status.area_index, self.area)
        set_mock_value(self.stm.scan.area_index, self.area)


def make_stm(RE, sim: bool = True) -> tuple[STM, FakeController]:
    with init_devices(mock=True):
        stm = STM("MOCK:", sim=sim)
    return stm, FakeController(stm)


@pytest.fixture
def stm(RE):
    return make_stm(RE)[0]


def events(docs, stream: str = "primary") -> list[dict]:
    descriptors = {d["uid"] for n, d in docs if n == "descriptor" and d["name"] == stream}
    return [d for n, d in docs if n == "event" and d["descriptor"] in descriptors]


def start(docs) -> dict:
    return next(d for n, d in docs if n == "start")


def writable(stm: STM) -> dict[str, SignalW]:
    """Every signal of the device that can be written."""
    found = {path: dev for path, dev in walk_devices(stm).items() if isinstance(dev, SignalW)}
    assert len(found) >= 20
    return found


def spiral_reference(mask: AreaMask, x: float, y: float, margin: float,
                     max_distance: float) -> tuple[float, float] | None:
    """The selection rule written out cell by cell, independent of the vectorised code."""
    best = None
    n = mask.cells
    for row in range(n):
        for col in range(n):
            if mask.blocked[row, col]:
                continue
            i, j = col - (n - 1) / 2, row - (n - 1) / 2
            cx, cy = i * mask.cell_size, j * mask.cell_size
            if max(abs(cx), abs(cy)) + margin > limits.CENTER_HALF_RANGE:
                continue
            dist = math.hypot(i - x / mask.cell_size, j - y / mask.cell_size)
            if dist * mask.cell_size > max_distance:
                continue
            key = (max(abs(i), abs(j)) + dist, dist, row, col)
            if best is None or key < best[0]:
                best = (key, (cx, cy))
    return None if best is None else best[1]


# -- the area mask ---------------------------------------------------------------------


def test_spiral_starts_at_centre_and_fills_rings_outward():
    mask = AreaMask()
    order = []
    for _ in range(25):
        x, y = mask.next_cell(margin=5e-9)
        order.append((round(x / 10e-9), round(y / 10e-9)))
        mask.block_disc(x, y, 5e-9)
        mask.position = (x, y)
    assert order[0] == (0, 0)
    assert {max(abs(i), abs(j)) for i, j in order[:9]} == {0, 1}
    assert sorted(order[:9]) == sorted((i, j) for i in (-1, 0, 1) for j in (-1, 0, 1))
    assert sorted(order) == sorted((i, j) for i in range(-2, 3) for j in range(-2, 3))
    steps = [math.dist(a, b) for a, b in itertools.pairwise(order)]
    assert max(steps) == 1.0, "the spiral moves to a neighbouring cell every time"
    assert order[:9] == [(0, 0), (0, -1), (-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0),
                         (1, -1)]


def test_next_cell_matches_the_rule_written_out():
    rng = np.random.default_rng(3)
    mask = AreaMask(cell_size=50e-9)  # 17 x 17 cells: quick to check by brute force
    mask.blocked[:] = rng.random(mask.blocked.shape) < 0.3
    position = (120e-9, -260e-9)
    for _ in range(300):
        got = mask.next_cell(*position, margin=25e-9, max_distance=300e-9)
        assert got == spiral_reference(mask, *position, 25e-9, 300e-9)
        if got is None:
            break
        mask.block_disc(*got, 25e-9)
        position = got
    else:
        pytest.fail("the reachable cells should run out within 300 steps")


def test_block_disc_edges_and_limits():
    mask = AreaMask()
    assert mask.cells == 85
    assert mask.block_disc(0.0, 0.0, 5e-9) == 1
    assert mask.block_disc(0.0, 0.0, 5e-9) == 0
    # The eight neighbours reach into a 10 nm disc (their nearest corners are 7.1 nm away).
    assert mask.block_disc(0.0, 0.0, 10e-9) == 8
    assert not mask.is_free(3e-9, -4e-9) and not mask.is_free(12e-9, 12e-9)
    assert mask.is_free(22e-9, 12e-9)  # its nearest point is 11.2 nm away
    assert mask.block_disc(30e-9, 30e-9, 0.0) == 1  # a zero disc still blocks its cell
    assert mask.next_cell(0.0, 0.0, max_distance=1e-9) is None  # all near cells used
    with pytest.raises(ValueError, match="radius"):
        mask.block_disc(0.0, 0.0, -1.0)
    # The frames of the outermost cells would leave the usable range: never chosen.
    edge = (85 - 1) / 2 * 10e-9
    assert edge + 5e-9 > limits.CENTER_HALF_RANGE
    full = AreaMask()
    full.blocked[1:-1, 1:-1] = True
    assert full.free_cells > 0
    assert full.next_cell(edge, edge, margin=5e-9, max_distance=2e-6) is None


def test_no_point_of_a_free_cell_lies_inside_a_blocked_disc():
    """A crash zone is a disc: frames fill their cells and actions land anywhere in a frame,
    so every point of every free cell must stay outside every blocked disc."""
    rng = np.random.default_rng(7)
    mask = AreaMask()
    discs = [(rng.uniform(-300e-9, 300e-9), rng.uniform(-300e-9, 300e-9),
              rng.uniform(0.0, 150e-9)) for _ in range(12)]
    for disc in discs:
        mask.block_disc(*disc)
    rows, cols = np.nonzero(~mask.blocked)
    # Points spread over each free cell, its corners and edges included.
    grid = (np.linspace(0.0, 1.0, 6) - 0.5) * mask.cell_size
    for row, col in zip(rows, cols, strict=True):
        cx, cy = mask.cell_center(int(row), int(col))
        px, py = np.meshgrid(cx + grid, cy + grid)
        for x, y, radius in discs:
            assert np.hypot(px - x, py - y).min() >= radius - 1e-15
    # And it blocks no more than it must: every blocked cell reaches into a disc.
    half = mask.cell_size / 2
    for row, col in zip(*np.nonzero(mask.blocked), strict=True):
        cx, cy = mask.cell_center(int(row), int(col))
        nearest = [math.hypot(max(abs(cx - x) - half, 0.0), max(abs(cy - y) - half, 0.0))
                   < max(radius, 1e-15) for x, y, radius in discs]
        assert any(nearest)


def test_mask_json_round_trip_and_refusals(tmp_path):
    mask = AreaMask(area_index=3, position=(20e-9, -10e-9))
    mask.block_disc(20e-9, -10e-9, 25e-9)
    path = tmp_path / "state" / "mask.json"
    mask.save(path)
    data = json.loads(path.read_text())  # plain JSON, no pickle
    assert data["format"] == "spm-bluesky-area-mask" and len(data["rows"]) == 85
    loaded = AreaMask.load(path)
    assert np.array_equal(loaded.blocked, mask.blocked)
    assert loaded.position == mask.position and loaded.area_index == 3
    assert AreaMask.load_or_new(path, 3).free_cells == mask.free_cells
    assert AreaMask.load_or_new(path, 4).free_cells == 85 * 85  # other area: fresh
    with pytest.raises(ValueError, match="cells of"):
        AreaMask.load_or_new(path, 3, cell_size=20e-9)
    path.write_text(json.dumps({**data, "format": "other"}))
    with pytest.raises(ValueError, match="not an area mask"):
        AreaMask.load(path)


# -- devices ---------------------------------------------------------------------------


def test_scan_detector_reads_a_2d_float32_image_in_metres(RE, stm):
    async def go():
        await stm.scan.pixels.set(16)
        await stm.scan.trigger()
        return await stm.scan.describe(), await stm.scan.read(), await stm.scan.read_configuration()

    described, reading, config = asyncio.run_coroutine_threadsafe(go(), RE.loop).result(10)
    key = described["stm-scan-image"]
    assert key["shape"] == [16, 16] and key["dtype_numpy"] == "<f4" and key["units"] == "m"
    image = reading["stm-scan-image"]["value"]
    assert image.shape == (16, 16) and image.dtype == np.float32
    assert set(reading) == set(described)
    for name in ("center_x", "center_y", "size", "pixels", "area_index", "frame_counter",
                 "clock"):
        assert f"stm-scan-{name}" in reading
    assert set(config) == {"stm-scan-bias", "stm-scan-setpoint", "stm-scan-speed"}


def test_scan_trigger_waits_for_the_frame_counter(RE, stm):
    """A put-callback that completes before the counter monitor must not end the trigger."""

    async def lagging_acquire(value: int) -> None:  # the counter arrives 0.3 s late
        async def later():
            await asyncio.sleep(0.3)
            set_mock_value(stm.scan.frame_counter, 7)
        asyncio.get_running_loop().create_task(later())

    async def go():
        set_mock_value(stm.scan.frame_counter, 6)
        callback_on_mock_put(stm.scan.acquire, lagging_acquire)
        status = stm.scan.trigger()
        await asyncio.sleep(0.15)
        early = status.done
        await status
        return early, await stm.scan.frame_counter.get_value()

    early, counter = asyncio.run_coroutine_threadsafe(go(), RE.loop).result(10)
    assert early is False and counter == 7


def test_image_shorter_than_a_frame_is_an_error(RE, stm):
    async def go():
        set_mock_value(stm.scan.image, np.zeros(10, np.float32))
        await stm.scan.read()

    with pytest.raises(RuntimeError, match="needs 4096"):
        asyncio.run_coroutine_threadsafe(go(), RE.loop).result(10)


class RefusedPut(Exception):
    """Falsy like aioca's CANothing when a put is refused (ECA_PUTFAIL)."""

    def __bool__(self) -> bool:
        return False


def test_a_refused_put_raises(RE, stm):
    """ophyd-async's own SignalRW.set would report this put as done (see CheckedSignalRW)."""

    def refuse(value):
        raise RefusedPut("Channel write request failed")

    async def go():
        callback_on_mock_put(stm.scan.center_x, refuse)
        await stm.scan.center_x.set(1.0)

    with pytest.raises(PutRefused, match="Scan:CenterX refused"):
        asyncio.run_coroutine_threadsafe(go(), RE.loop).result(10)
    callback_on_mock_put(stm.tip.pulse.command, refuse)
    with pytest.raises(Exception, match="refused"):
        RE(tip_action(stm, "pulse_+2.5V", 0.0, 0.0))


def test_device_without_sim_part(RE):
    stm, _ = make_stm(RE, sim=False)
    assert not stm.simulated and not hasattr(stm, "sim")
    assert "sim" not in dict(stm.children())


# -- plans -----------------------------------------------------------------------------


def test_survey_one_run_one_event_per_image_along_the_spiral(RE, docs, stm):
    result = RE(survey(stm, 5, session_uid="session-1", md={"operator": "test"}))
    assert result.plan_result == 5
    starts = [d for n, d in docs if n == "start"]
    assert len(starts) == 1
    md = starts[0]
    assert md["plan_name"] == "survey" and md["session_uid"] == "session-1"
    assert md["twin_seed"] == SEED and md["sample"]["twin_seed"] == SEED
    assert md["instrument"]["simulated"] is True and md["operator"] == "test"
    primary = events(docs)
    assert len(primary) == 5
    expected = [(0, 0), (0, -1), (-1, -1), (-1, 0), (-1, 1)]
    for event, (i, j) in zip(primary, expected, strict=True):
        data = event["data"]
        assert data["stm-scan-center_x"] == pytest.approx(i * 10e-9)
        assert data["stm-scan-center_y"] == pytest.approx(j * 10e-9)
        image = np.asarray(data["stm-scan-image"])
        assert image.shape == (64, 64) and image.dtype == np.float32
    assert [np.asarray(e["data"]["stm-scan-image"])[0, 0] for e in primary] == [1, 2, 3, 4, 5]
    assert len(events(docs, "truth")) == 5
    stop = next(d for n, d in docs if n == "stop")
    assert stop["exit_status"] == "success" and stop["num_events"]["primary"] == 5


def test_survey_mask_persists_across_restarts(RE, docs, tmp_path):
    path = str(tmp_path / "mask.json")
    stm, _ = make_stm(RE)
    RE(survey(stm, 4, mask_path=path))
    RE(survey(stm, 4, mask_path=path))  # a restarted session picks the file up
    resumed = [(e["data"]["stm-scan-center_x"], e["data"]["stm-scan-center_y"])
               for e in events(docs)]
    reference, _ = make_stm(RE)
    docs.clear()
    RE(survey(reference, 8))  # one uninterrupted survey
    straight = [(e["data"]["stm-scan-center_x"], e["data"]["stm-scan-center_y"])
                for e in events(docs)]
    assert resumed == straight and len(set(resumed)) == 8
    mask = AreaMask.load(path)
    assert mask.free_cells == 85 * 85 - 8 and mask.position == resumed[-1]


def test_survey_starts_a_fresh_mask_in_a_new_area(RE, docs, tmp_path):
    path = str(tmp_path / "mask.json")
    stm, _ = make_stm(RE)
    RE(survey(stm, 3, mask_path=path))
    RE(move_area(stm, mask_path=path))
    assert AreaMask.load(path).area_index == 1 and AreaMask.load(path).free_cells == 85 * 85
    RE(survey(stm, 1, mask_path=path))
    last = events(docs)[-1]["data"]
    assert last["stm-scan-area_index"] == 1
    assert AreaMask.load(path).area_index == 1


def test_survey_stops_when_no_cell_is_left(RE, docs, stm, tmp_path):
    path = tmp_path / "mask.json"
    full = AreaMask()
    full.blocked[:] = True
    full.blocked[42, 43] = False  # one free cell, right of the centre
    full.save(path)
    result = RE(survey(stm, 3, mask_path=str(path)))
    assert result.plan_result == 1
    assert len(events(docs)) == 1
    assert next(d for n, d in docs if n == "stop")["exit_status"] == "success"


def test_acquire_image_writes_the_frame_and_reads_it(RE, docs, stm):
    RE(acquire_image(stm, 100e-9, -50e-9, size=20e-9, pixels=32, bias=0.5, speed=100e-9))
    [event] = events(docs)
    assert event["data"]["stm-scan-center_x"] == pytest.approx(100e-9)
    assert np.asarray(event["data"]["stm-scan-image"]).shape == (32, 32)
    assert start(docs)["plan_name"] == "acquire_image"
    get_mock_put(stm.scan.bias).assert_called_once_with(0.5)
    get_mock_put(stm.scan.setpoint).assert_not_called()


def test_frame_order_keeps_each_step_inside_the_range(RE, stm):
    """Growing frame: centre first; shrinking frame: size first (the IOC checks both)."""
    calls = []

    def record(name):
        return lambda value: calls.append(name)

    for name in ("size", "center_x", "center_y"):
        callback_on_mock_put(getattr(stm.scan, name), record(name))
    set_mock_value(stm.scan.size, 200e-9)
    RE(acquire_image(stm, 390e-9, 0.0, size=10e-9))
    assert calls.index("size") < calls.index("center_x")
    calls.clear()
    RE(acquire_image(stm, 0.0, 0.0, size=200e-9))
    assert calls.index("center_x") < calls.index("size")


@pytest.mark.parametrize("name", ["pulse_+4.0V", "dip_1.8nm", "stall"])
def test_tip_action_applies_the_named_action(RE, docs, stm, tmp_path, name):
    path = str(tmp_path / "mask.json")
    action = ACTIONS_BY_NAME[name]
    RE(tip_action(stm, name, 50e-9, 30e-9, mask_path=path, session_uid="s"))
    [event] = events(docs, "action")
    data = event["data"]
    assert data["stm-tip-action_name"] == name
    assert data["stm-tip-action_counter"] == (0 if name == "stall" else 1)
    assert "stm-status-contact" in data
    md = start(docs)
    assert md["plan_name"] == "tip_action" and md["action"]["name"] == name
    if name.startswith("pulse"):
        assert data["stm-tip-pulse_bias"] == 4.0 and data["stm-tip-pulse_time"] == 0.2
        get_mock_put(stm.tip.dip.command).assert_not_called()
    elif name.startswith("dip"):
        assert data["stm-tip-dip_depth"] == pytest.approx(1.8e-9)
        get_mock_put(stm.tip.pulse.command).assert_not_called()
    else:
        get_mock_put(stm.tip.action_x).assert_not_called()
    mask = AreaMask.load(path)
    assert not mask.is_free(50e-9, 30e-9)
    assert mask.is_free(50e-9 + action.forbidden_radius + 10e-9, 30e-9)


def test_coarse_plans_complete_when_the_state_has_changed(RE, docs, stm):
    RE(withdraw(stm))
    assert events(docs)[-1]["data"]["stm-status-contact"] == 0
    RE(approach(stm))
    assert events(docs)[-1]["data"]["stm-status-contact"] == 1
    RE(move_area(stm, session_uid="s"))
    before, after = events(docs)[-2:]
    assert before["data"]["stm-status-area_index"] == 0
    assert after["data"]["stm-status-area_index"] == 1
    assert [d["plan_name"] for n, d in docs if n == "start"] == [
        "withdraw", "approach", "move_area"]


def test_plans_work_without_the_sim_part(RE, docs):
    stm, _ = make_stm(RE, sim=False)
    RE(survey(stm, 2))
    md = start(docs)
    assert "twin_seed" not in md and md["instrument"]["simulated"] is False
    assert len(events(docs)) == 2 and not events(docs, "truth")


BAD_PLANS = [
    ("survey n_images 0", lambda s: survey(s, 0), "n_images"),
    ("survey n_images 2.5", lambda s: survey(s, 2.5), "n_images"),
    ("survey size too big", lambda s: survey(s, 3, size=300e-9), "size"),
    ("survey size too small", lambda s: survey(s, 3, size=0.5e-9), "size"),
    ("survey pixels", lambda s: survey(s, 3, pixels=4), "pixels"),
    ("survey pixels float", lambda s: survey(s, 3, pixels=64.5), "pixels"),
    ("survey bias tiny", lambda s: survey(s, 3, bias=0.001), "bias"),
    ("survey bias big", lambda s: survey(s, 3, bias=9.0), "bias"),
    ("survey setpoint", lambda s: survey(s, 3, setpoint=1e-6), "setpoint"),
    ("survey speed", lambda s: survey(s, 3, speed=1.0), "speed"),
    ("survey radius", lambda s: survey(s, 3, block_radius=-1e-9), "block_radius"),
    ("survey distance", lambda s: survey(s, 3, max_distance=0.0), "max_distance"),
    ("acquire outside", lambda s: acquire_image(s, 500e-9, 0.0), "x="),
    ("acquire frame leaves range", lambda s: acquire_image(s, 0.0, 400e-9, size=20e-9), "y"),
    ("acquire pixels", lambda s: acquire_image(s, 0.0, 0.0, pixels=2048), "pixels"),
    ("tip action unknown", lambda s: tip_action(s, "pulse_+20V", 0.0, 0.0), "unknown"),
    ("tip action outside", lambda s: tip_action(s, "dip_1.0nm", 0.0, -1e-6), "y="),
    ("not an STM", lambda s: approach(s.scan), "STM"),
]


@pytest.mark.parametrize(("label", "make_plan", "message"), BAD_PLANS,
                         ids=[b[0] for b in BAD_PLANS])
def test_bad_parameters_are_refused_before_any_write(RE, docs, stm, label, make_plan,
                                                     message):
    with pytest.raises((ValueError, TypeError), match=message):
        RE(make_plan(stm))
    assert not docs, "no run may start"
    for path, signal in writable(stm).items():
        assert not get_mock_put(signal).called, f"{path} was written"


def test_bad_mask_file_is_refused_before_any_write(RE, docs, stm, tmp_path):
    path = tmp_path / "mask.json"
    path.write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="not an area mask"):
        RE(survey(stm, 2, mask_path=str(path)))
    assert not docs
    assert not any(get_mock_put(s).called for s in writable(stm).values())


def test_plans_suit_the_queueserver(RE, stm):
    """The queueserver sees every plan's parameters and turns the name "stm" into the device."""
    nspace = {"stm": stm, **{name: getattr(spm_bluesky.plans, name)
                             for name in spm_bluesky.plans.__all__}}
    plans, devices, _, _ = profile_ops.existing_plans_and_devices_from_nspace(nspace=nspace)
    assert set(spm_bluesky.plans.__all__) <= set(plans) and "stm" in devices
    annotations = {p["name"]: p.get("annotation", {}).get("type")
                   for p in plans["survey"]["parameters"]}
    assert annotations["n_images"] == "int" and annotations["mask_path"] == "str | None"
    for item in ({"name": "survey", "args": ["stm", 3], "kwargs": {"session_uid": "u"}},
                 {"name": "tip_action", "args": ["stm", "dip_1.0nm", 0.0, 10e-9]},
                 {"name": "acquire_image", "args": ["stm", 0.0, 0.0], "kwargs": {"pixels": 32}},
                 {"name": "approach", "args": ["stm"]},
                 {"name": "move_area", "args": ["stm"]}):
        assert profile_ops.validate_plan(item, allowed_plans=plans,
                                         allowed_devices=devices) == (True, "")
        prepared = profile_ops.prepare_plan(
            {**item, "user_group": "primary"}, plans_in_nspace=nspace,
            devices_in_nspace={"stm": stm}, allowed_plans={"primary": plans},
            allowed_devices={"primary": devices})
        assert prepared["args"][0] is stm
    ok, message = profile_ops.validate_plan({"name": "survey", "args": ["stm", "three"]},
                                            allowed_plans=plans, allowed_devices=devices)
    assert not ok and "n_images" in message


# -- the area mask between plans, and its file -------------------------------------------


class ConstantAssessor:
    """Says every image is bad: enough for plans that check their arguments."""

    model_id = "constant"

    def assess(self, image_m, scan_size_m):
        from spm_bluesky.protocols import CLASSES, Assessment

        return Assessment({c: float(c == "blunt") for c in CLASSES}, self.model_id)


def _with_mask_path(path: str):
    from spm_bluesky.ml.agent.policies import HeuristicPolicy
    from spm_bluesky.plans.autonomous import autonomous_session
    from spm_bluesky.plans.episode import condition_tip

    return {
        "survey": lambda s: survey(s, 2, mask_path=path),
        "tip_action": lambda s: tip_action(s, "pulse_+4.0V", 0.0, 0.0, mask_path=path),
        "move_area": lambda s: move_area(s, mask_path=path),
        "condition_tip": lambda s: condition_tip(s, HeuristicPolicy(), ConstantAssessor(),
                                                 mask_path=path),
        "autonomous_session": lambda s: autonomous_session(
            s, ConstantAssessor(), HeuristicPolicy(), images=2, mask_path=path),
    }


@pytest.mark.parametrize("where", ["under a file", "a folder"])
@pytest.mark.parametrize("plan", list(_with_mask_path("x")))
def test_an_unwritable_mask_file_is_refused_before_the_instrument_acts(RE, docs, stm,
                                                                       tmp_path, plan, where):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the mask's folder should be")
    path = str(blocker / "mask.json") if where == "under a file" else str(tmp_path)
    with pytest.raises(ValueError, match="cannot be written"):
        RE(_with_mask_path(path)[plan](stm))
    assert not docs, "no run may start"
    for signal_path, signal in writable(stm).items():
        assert not get_mock_put(signal).called, f"{signal_path} was written"
    assert RE(bps.rd(stm.tip.action_counter)).plan_result == 0  # no pulse, no dip


def test_a_mask_file_in_a_new_folder_is_accepted(RE, stm, tmp_path):
    path = tmp_path / "new" / "deeper" / "mask.json"
    RE(survey(stm, 2, mask_path=str(path)))
    assert AreaMask.load(path).free_cells == 85 * 85 - 2


def test_the_mask_passes_between_plans_in_memory(RE, docs, stm, tmp_path):
    mask = AreaMask()
    RE(survey(stm, 3, mask=mask))
    assert mask.free_cells == 85 * 85 - 3
    first = [(e["data"]["stm-scan-center_x"], e["data"]["stm-scan-center_y"])
             for e in events(docs)]
    assert mask.position == first[-1]
    # The action's forbidden disc lands in the same mask, and the next survey avoids it.
    action = ACTIONS_BY_NAME["pulse_+4.0V"]
    spot = (-20e-9, 0.0)
    RE(tip_action(stm, action.name, *spot, mask=mask))
    assert not mask.is_free(*spot) and mask.position == spot
    blocked = 85 * 85 - mask.free_cells
    assert blocked > 3
    docs.clear()
    RE(survey(stm, 2, mask=mask))
    for event in events(docs):
        x, y = event["data"]["stm-scan-center_x"], event["data"]["stm-scan-center_y"]
        assert math.hypot(x - spot[0], y - spot[1]) > action.forbidden_radius
        assert (x, y) not in first
    assert not (tmp_path / "mask.json").exists()  # no file unless asked for


def test_a_mask_of_another_area_starts_afresh(RE, stm):
    mask = AreaMask(area_index=7)
    mask.block_disc(0.0, 0.0, 100e-9)
    RE(survey(stm, 1, mask=mask))
    assert mask.area_index == 0 and mask.free_cells == 85 * 85 - 1


def test_named_autonomous_session_suits_the_queueserver(RE, stm):
    """The profile's autonomous_session takes the assessor and policy by name."""
    from spm_bluesky.services.queue_plans import autonomous_session

    nspace = {"stm": stm, "autonomous_session": autonomous_session}
    plans, devices, _, _ = profile_ops.existing_plans_and_devices_from_nspace(nspace=nspace)
    annotations = {p["name"]: p.get("annotation", {}).get("type")
                   for p in plans["autonomous_session"]["parameters"]}
    assert annotations["assessor"] == annotations["policy"] == "str"
    assert annotations["images"] == "int | None" and "resume_state" not in annotations
    good = {"name": "autonomous_session", "args": ["stm"],
            "kwargs": {"assessor": "shipped", "policy": "heuristic", "images": 5}}
    assert profile_ops.validate_plan(good, allowed_plans=plans,
                                     allowed_devices=devices) == (True, "")
    for kwargs, message in (({"images": "five"}, "images"), ({"nonsense": 1}, "nonsense")):
        ok, why = profile_ops.validate_plan(
            {"name": "autonomous_session", "args": ["stm"], "kwargs": kwargs},
            allowed_plans=plans, allowed_devices=devices)
        assert not ok and message in why


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"policy": "oracle"}, ValueError, "policy="),
    ({"policy": "nosuch"}, ValueError, "policy="),
    ({"assessor": "/no/such/weights.pt"}, FileNotFoundError, "weights"),
])
def test_named_autonomous_session_refuses_bad_names_before_any_write(RE, docs, stm, kwargs,
                                                                     error, message):
    from spm_bluesky.services.queue_plans import autonomous_session

    with pytest.raises(error, match=message):
        RE(autonomous_session(stm, images=2, **kwargs))
    assert not docs
    assert not any(get_mock_put(s).called for s in writable(stm).values())
