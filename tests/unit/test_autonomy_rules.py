"""Pure logic of the autonomous session: verdicts, growing debris discs, counters, clock,
parameter checks before any message."""

from __future__ import annotations

import numpy as np
import pytest

from spm_bluesky.autonomy.rules import (
    UNKNOWN_TIP,
    SessionConfig,
    SessionState,
    Verdict,
    classify,
    update_belief,
)
from spm_bluesky.devices.stm import STM
from spm_bluesky.domain import limits
from spm_bluesky.domain.area import AreaMask
from spm_bluesky.ml.agent.policies import HeuristicPolicy
from spm_bluesky.plans.autonomous import autonomous_session
from spm_bluesky.protocols import Assessment

CONFIG = SessionConfig(images=100)
Z_RANGE = limits.Z_RANGE


def terrace(seed: int = 0, bump: float = 0.0) -> np.ndarray:
    """A tilted, noisy terrace 100 nm up the z range, optionally with a tall bump."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:64, 0:64]
    image = 100e-9 + 1e-12 * x + 2e-12 * y + rng.normal(0, 5e-12, (64, 64))
    image += bump * np.exp(-((x - 30) ** 2 + (y - 30) ** 2) / 20.0)
    return image


def test_flat_images_at_the_z_limits_are_a_crash_and_lost_contact():
    crash = classify(np.full((64, 64), 1e-13), 0.99, Z_RANGE, CONFIG, 0)
    assert crash.verdict is Verdict.CRASH and crash.radius == pytest.approx(150e-9)
    lost = classify(np.full((64, 64), Z_RANGE), 0.99, Z_RANGE, CONFIG, 0)
    assert lost.verdict is Verdict.LOST_CONTACT and lost.radius == pytest.approx(5e-9)
    # Flat but in the middle of the range is just an (empty) image.
    assert classify(np.full((64, 64), Z_RANGE / 2), 0.99, Z_RANGE, CONFIG, 0).verdict \
        is Verdict.KEPT


def test_debris_discs_grow_with_every_retry_and_good_or_bad_follows_p_good():
    debris = [classify(terrace(bump=1.5e-9), 0.99, Z_RANGE, CONFIG, retry) for retry in range(3)]
    assert all(j.verdict is Verdict.DEBRIS for j in debris)
    assert [j.radius for j in debris] == pytest.approx([10e-9, 20e-9, 30e-9])
    assert debris[0].peak_to_peak > 0.6e-9
    assert classify(terrace(), 0.51, Z_RANGE, CONFIG, 0).verdict is Verdict.KEPT
    assert classify(terrace(), 0.49, Z_RANGE, CONFIG, 0).verdict is Verdict.BAD


def test_state_counts_images_bad_streaks_debris_retries_and_blocks_discs():
    state = SessionState("s", AreaMask())
    state.record(Verdict.BAD, 0.0, 0.0, 5e-9)
    state.record(Verdict.BAD, 10e-9, 0.0, 5e-9)
    assert state.consecutive_bad == 2 and state.images == 2
    state.record(Verdict.DEBRIS, 20e-9, 0.0, 10e-9)
    state.record(Verdict.DEBRIS, 30e-9, 0.0, 20e-9)
    assert state.debris_retries == 2 and state.consecutive_bad == 2  # debris is not judged
    state.record(Verdict.KEPT, 100e-9, 0.0, 5e-9)
    assert (state.debris_retries, state.consecutive_bad, state.good_images) == (0, 0, 1)
    state.record(Verdict.CRASH, -200e-9, 0.0, 150e-9)
    assert state.crashes == 1 and state.images == 6
    assert not state.mask.is_free(-200e-9 + 140e-9, 0.0)  # inside the 150 nm crash disc
    assert state.mask.is_free(-200e-9 + 170e-9, 0.0)
    assert state.mask.position == (-200e-9, 0.0)


def test_elapsed_time_survives_a_clock_reset_and_ends_the_session():
    state = SessionState("s")
    config = SessionConfig(hours=1.0)
    for clock in (100.0, 2000.0, 50.0, 1800.0):  # the IOC restarted after 2000 s
        state.observe_clock(clock)
    assert state.elapsed == pytest.approx(1900.0 + 50.0 + 1750.0)
    assert state.finished(config)
    assert not SessionState("s", images=9).finished(SessionConfig(images=10))
    assert SessionState("s", images=10).finished(SessionConfig(images=10))


class FixedAssessor:
    """A stand-in assessor: always the same judgement (no torch needed)."""

    model_id = "fixed"

    def assess(self, image_m: np.ndarray, scan_size_m: float) -> Assessment:
        return Assessment.from_vector(np.array([1.0, 0, 0, 0, 0]), self.model_id)


@pytest.mark.parametrize("kwargs, message", [
    ({}, "give hours or images"),
    ({"hours": -1.0}, "hours"),
    ({"images": 0}, "images"),
    ({"images": 5, "bad_limit": -1}, "bad_limit"),
    ({"images": 5, "run_images": 0}, "run_images"),
    ({"images": 5, "pixels": 4}, "pixels"),
    ({"images": 5, "keep_threshold": 1.5}, "keep_threshold"),
    ({"images": 5, "assessor_prior": 1.0}, "assessor_prior"),
    ({"images": 5, "tip_hazard": 0.0}, "tip_hazard"),
    ({"images": 5, "tip_hazard": 0.7}, "tip_hazard"),
    ({"images": 5, "debris_threshold": 0.0}, "debris_threshold"),
    ({"images": 5, "session_uid": ""}, "session_uid"),
])
def test_bad_parameters_are_refused_before_any_message(kwargs, message):
    plan = autonomous_session(STM("NONE:", name="stm"), FixedAssessor(), HeuristicPolicy(),
                              **kwargs)
    with pytest.raises(ValueError, match=message):
        next(plan)


def test_a_resume_state_of_another_session_is_refused():
    plan = autonomous_session(STM("NONE:", name="stm"), FixedAssessor(), HeuristicPolicy(),
                              images=5, session_uid="a", resume_state=SessionState("b"))
    with pytest.raises(ValueError, match="does not match"):
        next(plan)


def run_filter(p_goods, config=CONFIG, belief=UNKNOWN_TIP) -> list[float]:
    """P(tip good) after each frame of ``p_goods``."""
    beliefs = []
    for p in p_goods:
        belief = update_belief(belief, p, config)
        beliefs.append(belief)
    return beliefs


def test_without_memory_and_at_an_even_prior_the_filter_is_the_frame_p_good():
    memoryless = SessionConfig(images=1, tip_hazard=0.5, assessor_prior=0.5)
    for belief in (0.01, 0.5, 0.99):
        for p in (0.02, 0.3, 0.5, 0.8, 0.97):
            assert update_belief(belief, p, memoryless) == pytest.approx(p)


def test_the_filter_outlasts_one_odd_frame_and_follows_a_real_change():
    # Fifty frames of a good tip with one that looks bad (p 0.05): all judged good.
    good_run = [0.95] * 25 + [0.05] + [0.95] * 24
    beliefs = run_filter(good_run)
    assert min(beliefs[1:]) > CONFIG.keep_threshold
    # The tip degrades: confident bad frames turn the belief within two frames, and one
    # frame that looks good (p 0.8) among them does not turn it back.
    after = run_filter([0.02, 0.02, 0.02, 0.8, 0.02, 0.02], belief=beliefs[-1])
    assert after[1] < CONFIG.keep_threshold
    assert max(after[1:]) < CONFIG.keep_threshold
    # Under the assessor's balanced prior (1 good class in 5), p(good) 0.3 is evidence
    # for a good tip: from an unknown tip, it is judged good.
    assert update_belief(UNKNOWN_TIP, 0.3, CONFIG) > 0.5 > update_belief(UNKNOWN_TIP, 0.1,
                                                                         CONFIG)
    # Certain inputs (the oracle) are clipped, never taken as proof against all history.
    assert 0.0 < update_belief(0.99, 0.0, CONFIG) < 0.05
    assert 0.99 < update_belief(0.01, 1.0, CONFIG) < 1.0


def test_kept_and_bad_images_carry_the_belief_and_a_crash_forgets_it():
    state = SessionState("s", AreaMask())
    state.record(Verdict.KEPT, 0.0, 0.0, 5e-9, 0.97)
    assert state.tip_belief == 0.97
    state.record(Verdict.DEBRIS, 20e-9, 0.0, 10e-9, 0.2)  # debris is not judged
    assert state.tip_belief == 0.97
    state.record(Verdict.BAD, 40e-9, 0.0, 5e-9, 0.3)
    assert state.tip_belief == 0.3 and state.consecutive_bad == 1
    state.record(Verdict.CRASH, 60e-9, 0.0, 150e-9)
    assert state.tip_belief == UNKNOWN_TIP
