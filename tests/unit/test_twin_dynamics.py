"""The tip model's dynamics and the instrument's behaviour (clock, contact, crashes)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from spm_bluesky.domain import limits, processing
from spm_bluesky.domain.actions import ACTIONS, ActionKind
from spm_bluesky.twin import Fault, Frame, Instrument, InstrumentError, TipClass, TipConfig
from spm_bluesky.twin.tip import (
    DEFECTS,
    add_defect,
    apply_action,
    degraded_tip,
    good_tip,
    oracle_action,
)

CONFIG = TipConfig()
#: A 10 nm image never has the 100 nm free square that +8 V needs.
ALLOWED = tuple(a for a in ACTIONS if a.free_square <= 10e-9)


def _episode(policy, seed: int, cap: int = 100) -> int:
    rng = np.random.default_rng(seed)
    state = degraded_tip(rng, CONFIG)
    actions = 0
    while state.tip_class(CONFIG) is not TipClass.GOOD and actions < cap:
        state = apply_action(state, policy(state, rng), rng, CONFIG)
        actions += 1
    return actions


def test_random_policy_needs_at_least_three_times_the_oracles_actions():
    episodes = range(1000, 1300)  # 300 seeded episodes

    def random_policy(state, rng):
        return ALLOWED[int(rng.integers(len(ALLOWED)))]

    def oracle(state, rng):
        return oracle_action(state, ALLOWED, CONFIG)

    random_mean = np.mean([_episode(random_policy, s) for s in episodes])
    oracle_mean = np.mean([_episode(oracle, s) for s in episodes])
    assert oracle_mean >= 1.0
    assert random_mean / oracle_mean >= 3.0, (random_mean, oracle_mean)


def _repair_rate(action, defect: TipClass, trials: int = 300) -> float:
    rng = np.random.default_rng([ACTIONS.index(action), DEFECTS.index(defect)])
    fixed = 0
    for _ in range(trials):
        state = add_defect(good_tip(rng, CONFIG), defect, rng, CONFIG)
        after = apply_action(state, action, rng, CONFIG)
        fixed += defect not in after.defects(CONFIG)
    return fixed / trials


def test_no_single_action_repairs_every_bad_state():
    for action in ACTIONS:
        worst = min(_repair_rate(action, defect) for defect in DEFECTS)
        assert worst < 0.3, f"{action.name} repairs every defect at least {worst:.0%} of times"


def test_every_defect_has_an_action_that_usually_helps():
    for defect in DEFECTS:
        best = max(_repair_rate(action, defect) for action in ALLOWED)
        assert best > 0.45, f"nothing repairs {defect.value} reliably"


def _creation_rate(action, defect: TipClass, trials: int = 400) -> float:
    rng = np.random.default_rng(7)
    made = sum(defect in apply_action(good_tip(rng, CONFIG), action, rng, CONFIG).defects(CONFIG)
               for _ in range(trials))
    return made / trials


def test_strong_actions_can_make_things_worse():
    deep_dip = next(a for a in ACTIONS if a.kind is ActionKind.DIP and a.depth == 5e-9)
    strong_pulse = next(a for a in ACTIONS if a.kind is ActionKind.PULSE and a.bias == -8.0)
    assert _creation_rate(deep_dip, TipClass.BLUNT) > 0.15
    assert _creation_rate(strong_pulse, TipClass.MULTI_APEX) > 0.08
    stall = ACTIONS[0]
    assert all(_creation_rate(stall, d) == 0 for d in DEFECTS)


def _debris_spot(instrument: Instrument) -> tuple[float, float]:
    patch = instrument.sample.patch(0, -400e-9, 400e-9, -400e-9, 400e-9)
    tall = np.flatnonzero(patch.other.amp > 2.0e-9)
    assert len(tall), "the sample should hold tall debris somewhere"
    inside = [i for i in tall if max(abs(patch.other.x[i]), abs(patch.other.y[i])) < 350e-9]
    i = inside[0]
    return float(patch.other.x[i]), float(patch.other.y[i])


def test_a_deep_dip_over_debris_crashes_the_tip():
    instrument = Instrument(21)
    x, y = _debris_spot(instrument)
    err_x, err_y = instrument.position_error(instrument.clock)
    instrument.dip(x - float(err_x), y - float(err_y), 5e-9)
    assert instrument.crashed and not instrument.contact
    assert instrument.crash_count == 1
    assert TipClass.BLUNT in instrument.tip.defects(instrument.config.tip)
    # The image of a crashed tip is flat at the retracted end of z.
    image = instrument.scan(Frame())
    assert np.ptp(image) < 1e-11 and abs(float(image.mean())) < 1e-10
    with pytest.raises(InstrumentError):
        instrument.pulse(0.0, 0.0, 4.0, 0.2)
    instrument.withdraw()
    instrument.approach()
    assert instrument.contact and not instrument.crashed


def test_tips_degrade_by_themselves_with_the_configured_mean_time():
    mean_time = 600.0
    frame = Frame(pixels=16)  # 4 s per frame
    times = []
    for seed in range(60):
        config = replace(Instrument(seed).config, tip=replace(CONFIG, mean_degrade_time=mean_time))
        instrument = Instrument(seed, config)
        instrument.set_tip(replace(instrument.tip, instability=0.0))
        while instrument.tip_class is TipClass.GOOD and instrument.clock < 20 * mean_time:
            instrument.scan(frame)
        times.append(instrument.clock)
    assert 0.7 * mean_time < np.mean(times) < 1.35 * mean_time


def test_an_unstable_tip_shows_streaks_only_in_some_images():
    instrument = Instrument(31)
    rng = np.random.default_rng(31)
    instrument.set_tip(add_defect(good_tip(rng, CONFIG), TipClass.UNSTABLE, rng, CONFIG))
    frames = [Frame(center_x=i * 11e-9 - 200e-9, center_y=50e-9) for i in range(36)]
    streaky = np.mean([len(processing.line_jumps(instrument.scan(f))) > 0 for f in frames])
    assert 0.15 <= streaky <= 0.9, streaky


def test_clock_advances_by_realistic_durations():
    instrument = Instrument(0)
    frame = Frame(size=10e-9, pixels=64, speed=80e-9)
    start = instrument.clock
    instrument.scan(frame)
    assert instrument.clock - start == pytest.approx(64 * 2 * 10e-9 / 80e-9)  # 16 s
    start = instrument.clock
    instrument.pulse(0.0, 0.0, 2.5, 0.2)
    assert 0.2 <= instrument.clock - start <= 0.5
    instrument.withdraw()
    start = instrument.clock
    instrument.approach()
    assert instrument.clock - start >= 120.0  # settling after an approach


def test_lost_contact_gives_a_flat_image_at_full_extension_until_reapproach():
    instrument = Instrument(0)
    instrument.inject_fault(Fault.LOSE_CONTACT)
    image = instrument.scan(Frame())
    assert np.ptp(image) < 1e-11
    assert float(image.mean()) == pytest.approx(limits.Z_RANGE, rel=1e-6)
    instrument.approach()
    assert instrument.contact
    assert np.ptp(processing.subtract_plane(instrument.scan(Frame()))) > 1e-11


def test_move_area_reaches_a_fresh_surface():
    instrument = Instrument(0)
    frame = Frame(center_x=30e-9, center_y=30e-9)
    before = processing.flatten_lines(instrument.scan(frame))
    instrument.move_area()
    assert instrument.area_index == 1 and instrument.contact
    after = processing.flatten_lines(instrument.scan(frame))
    assert abs(np.corrcoef(before.ravel(), after.ravel())[0, 1]) < 0.5


@pytest.mark.parametrize(
    "call",
    [
        lambda i: i.scan(Frame(size=300e-9)),
        lambda i: i.scan(Frame(pixels=4)),
        lambda i: i.scan(Frame(center_x=1e-6)),
        lambda i: i.scan(Frame(bias=0.001)),
        lambda i: i.pulse(0.0, 0.0, 12.0, 0.2),
        lambda i: i.pulse(0.0, 0.0, 2.0, 10.0),
        lambda i: i.dip(0.0, 0.0, 40e-9),
        lambda i: i.dip(1e-6, 0.0, 1e-9),
    ],
)
def test_out_of_limit_requests_are_refused_and_change_nothing(call):
    instrument = Instrument(0)
    before = (instrument.clock, instrument.action_count, instrument.frame_count, instrument.tip)
    with pytest.raises(ValueError):
        call(instrument)
    after = (instrument.clock, instrument.action_count, instrument.frame_count, instrument.tip)
    assert before == after


def test_docs_list_the_tip_dynamics_as_implemented():
    from pathlib import Path

    from spm_bluesky.twin.tip import dynamics_table

    reference = (Path(__file__).parents[2] / "docs" / "reference" / "twin.md").read_text()
    assert dynamics_table(ACTIONS) in reference, (
        "regenerate the table in docs/reference/twin.md: spm_bluesky.twin.tip.dynamics_table")
