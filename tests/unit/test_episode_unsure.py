"""A conditioning episode never acts on the word of a frame the assessor is unsure of
(ophyd-async mock mode, a real RunEngine): such frames are recorded and passed over, the
next one is taken elsewhere, and ``unsure_limit`` of them in a row end the episode unrepaired
with ``unsure`` in its outcome."""

from __future__ import annotations

import bluesky.plan_stubs as bps
import pytest

from spm_bluesky import schema
from spm_bluesky.domain.actions import ACTIONS, ActionKind
from spm_bluesky.plans.episode import condition_tip
from spm_bluesky.protocols import CLASSES, Assessment, Decision
from tests.unit.test_plans_mock import events, make_stm


class ScriptedAssessor:
    """Says "blunt" of every frame, unsure of the frames whose number (from 1) is listed."""

    model_id = "scripted"

    def __init__(self, unsure: set[int] | None = None, always_unsure: bool = False) -> None:
        self.unsure, self.always_unsure = unsure or set(), always_unsure
        self.frames = 0

    def assess(self, image_m, scan_size_m) -> Assessment:
        self.frames += 1
        unsure = self.always_unsure or self.frames in self.unsure
        return Assessment({c: float(c == "blunt") for c in CLASSES}, self.model_id,
                          unsure_score=1e3 if unsure else 1.0, unsure=unsure)


class CountingPolicy:
    """The first allowed pulse; counts the observations it was asked to act on."""

    name = "counting"

    def __init__(self) -> None:
        self.decisions = 0

    def reset(self, seed: int | None = None) -> None:
        pass

    def act(self, observation, mask) -> Decision:
        self.decisions += 1
        return Decision(next(i for i, a in enumerate(ACTIONS)
                             if a.kind is ActionKind.PULSE and mask[i]))


def _ordered(docs) -> list[str]:
    """The episode's events in order, as ``"unsure"``, ``"sure"`` (assessments) and
    ``"action"``."""
    streams = {d["uid"]: d["name"] for n, d in docs if n == "descriptor"}
    order = []
    for name, doc in docs:
        if name != "event":
            continue
        stream = streams[doc["descriptor"]]
        if stream == schema.ASSESSMENT:
            order.append("unsure" if doc["data"][schema.ASSESSMENT_UNSURE] else "sure")
        elif stream == schema.ACTION:
            order.append("action")
    return order


def test_unsure_frames_are_passed_over_and_never_acted_on(RE, docs):
    stm, _ = make_stm(RE)
    policy = CountingPolicy()
    assessor = ScriptedAssessor(unsure={1, 2, 4})
    outcome = RE(condition_tip(stm, policy, assessor, max_actions=2,
                               unsure_limit=3)).plan_result
    assert _ordered(docs) == ["unsure", "unsure", "sure", "action", "unsure", "sure",
                              "action", "sure"]
    assert policy.decisions == outcome["actions"] == 2
    assert outcome["unsure_images"] == 3 and not outcome["unsure"]
    assert not outcome["success"]
    # Every frame was taken at its own spot.
    frames = events(docs)
    spots = {(f["data"]["stm-scan-center_x"], f["data"]["stm-scan-center_y"]) for f in frames}
    assert len(frames) == len(spots) == 6


@pytest.mark.parametrize("limit", [1, 3])
def test_unsure_frames_in_a_row_end_the_episode_without_an_action(RE, docs, limit):
    stm, _ = make_stm(RE)
    policy = CountingPolicy()
    outcome = RE(condition_tip(stm, policy, ScriptedAssessor(always_unsure=True),
                               unsure_limit=limit)).plan_result
    assert _ordered(docs) == ["unsure"] * limit
    assert policy.decisions == outcome["actions"] == 0
    assert outcome["unsure"] and outcome["unsure_images"] == limit
    assert not outcome["success"]
    assert RE(bps.rd(stm.tip.action_counter)).plan_result == 0


def test_a_bad_unsure_limit_is_refused_before_anything_runs(RE, docs):
    stm, _ = make_stm(RE)
    with pytest.raises(ValueError, match="unsure_limit"):
        RE(condition_tip(stm, CountingPolicy(), ScriptedAssessor(), unsure_limit=0))
    assert not docs
