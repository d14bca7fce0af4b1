"""A crash or lost contact during a conditioning episode's action, in ophyd-async mock mode
with a real RunEngine and a real journal: the crash is made durable (a crash mark) before the
tip is withdrawn, its disc is blocked and recorded in a ``fault`` event, the episode goes on
outside the disc, and the session state rebuilt from the journal counts it once, also when
the process died right after the mark."""

from __future__ import annotations

import math

import pytest
from bluesky.utils import FailedStatus
from ophyd_async.core import callback_on_mock_put, set_mock_value

from spm_bluesky import schema
from spm_bluesky.autonomy.rules import SessionConfig
from spm_bluesky.autonomy.state import CRASH_MARK, rebuild
from spm_bluesky.domain.actions import ACTIONS, ActionKind
from spm_bluesky.plans.episode import CRASH_RADIUS, condition_tip
from spm_bluesky.protocols import Decision
from spm_bluesky.storage.journal import Journal, RecordKind, read_marks, read_records
from tests.unit.test_plans_mock import ConstantAssessor, make_stm

SESSION = "episode-crash"


class FirstOf:
    """Always the first allowed action of one kind (a pulse or a dip)."""

    name = "first-of"

    def __init__(self, kind: ActionKind) -> None:
        self.kind = kind

    def reset(self, seed: int | None = None) -> None:
        pass

    def act(self, observation, mask) -> Decision:
        return Decision(next(i for i, a in enumerate(ACTIONS)
                             if a.kind is self.kind and mask[i]))


class Tip:
    """The tip's condition in the mock: ``fault`` happens at the first action; ``order``
    lists the safety marks and coarse commands as they come."""

    def __init__(self, stm, fault: str, refuse: bool) -> None:
        self.stm, self.fault, self.refuse = stm, fault, refuse
        self.order: list[str] = []
        self.crashes = 0
        callback_on_mock_put(stm.tip.pulse.command, self.action)
        callback_on_mock_put(stm.tip.dip.command, self.action)
        callback_on_mock_put(stm.coarse.withdraw.command, self.coarse("withdraw", 0))
        callback_on_mock_put(stm.coarse.approach.command, self.coarse("approach", 1))

    async def action(self, value: int) -> None:
        count = await self.stm.tip.action_counter.get_value()
        if self.fault:
            fault, self.fault = self.fault, ""
            set_mock_value(self.stm.status.contact, 0)
            if fault == "crash":
                self.crashes += 1
                set_mock_value(self.stm.status.crashed, 1)
                set_mock_value(self.stm.status.crash_count, self.crashes)
            if self.refuse:
                raise RuntimeError("the tip has crashed: withdraw and approach first")
        set_mock_value(self.stm.tip.action_counter, count + 1)

    def coarse(self, name: str, contact: int):
        def put(value: int) -> None:
            self.order.append(name)
            set_mock_value(self.stm.status.contact, contact)
            if contact:
                set_mock_value(self.stm.status.crashed, 0)
        return put


def _episode(RE, tmp_path, fault: str, refuse: bool, kind: ActionKind = ActionKind.PULSE):
    stm, _ = make_stm(RE)
    tip = Tip(stm, fault, refuse)
    journal = Journal(tmp_path, sync=False)
    RE.subscribe(journal)

    def safety(name, data):
        tip.order.append(name)
        journal.mark(name, data)

    md = {schema.AUTONOMY: SessionConfig(images=100).as_md(), schema.AUTONOMY_RUN: 0}
    outcome = RE(condition_tip(stm, FirstOf(kind), ConstantAssessor(), max_actions=3,
                               session_uid=SESSION, md=md, safety=safety)).plan_result
    journal.close()
    return outcome, tip


def _stream(tmp_path, stream: str) -> list[dict]:
    records = list(read_records(tmp_path))
    descriptors = {r.body["uid"] for r in records
                   if r.name == "descriptor" and r.body["name"] == stream}
    return [r.body["data"] for r in records
            if r.name == "event" and r.body["descriptor"] in descriptors]


@pytest.mark.parametrize(("kind", "refuse"), [(ActionKind.PULSE, True),
                                              (ActionKind.DIP, False)],
                         ids=["pulse refused after a crash", "dip that crashes"])
def test_a_crash_during_an_action_is_durable_before_the_tip_moves(RE, tmp_path, kind, refuse):
    outcome, tip = _episode(RE, tmp_path, "crash", refuse, kind)
    assert tip.order[:3] == [CRASH_MARK, "withdraw", "approach"]
    assert outcome["crashes"] == 1
    assert outcome["actions"] == (2 if refuse else 3)  # a refused action is not counted
    (mark,) = read_marks(tmp_path, CRASH_MARK)
    (fault,) = _stream(tmp_path, schema.FAULT)
    assert fault[schema.FAULT_KIND] == "crash"
    assert fault[schema.FAULT_RADIUS] == mark.body["radius"] == CRASH_RADIUS
    assert (fault[schema.FAULT_X], fault[schema.FAULT_Y]) == (mark.body["x"], mark.body["y"])
    # Every frame after the crash is outside its disc.
    frames = _stream(tmp_path, schema.PRIMARY)
    assert len(frames) == 4  # the first, then one after each try
    for frame in frames[1:]:
        distance = math.hypot(frame["stm-scan-center_x"] - mark.body["x"],
                              frame["stm-scan-center_y"] - mark.body["y"])
        assert distance >= CRASH_RADIUS - 5e-9
    actions = _stream(tmp_path, schema.ACTION)
    assert len(actions) == outcome["actions"]

    state = rebuild(None, SESSION, journal=tmp_path)
    assert (state.crashes, state.actions, state.episodes) == (1, outcome["actions"], 1)
    assert not state.mask.is_free(mark.body["x"] + 140e-9, mark.body["y"])


def test_a_kill_right_after_the_crash_mark_still_rebuilds_the_crash(RE, tmp_path):
    _episode(RE, tmp_path / "whole", "crash", refuse=True)
    cut = tmp_path / "killed"
    with Journal(cut, sync=False) as journal:  # what a SIGKILL after the mark leaves
        for record in read_records(tmp_path / "whole"):
            if record.kind is RecordKind.MARK:
                journal.mark(record.name, record.body)
                break
            journal.append_document(record.name, record.body)
    state = rebuild(None, SESSION, journal=cut)
    (mark,) = read_marks(cut, CRASH_MARK)
    assert state.crashes == 1 and state.episodes == 1
    assert not state.mask.is_free(mark.body["x"] + 140e-9, mark.body["y"])


def test_lost_contact_during_an_action_is_recorded_and_approached(RE, tmp_path):
    outcome, tip = _episode(RE, tmp_path, "lose_contact", refuse=True)
    assert tip.order[0] == "approach" and CRASH_MARK not in tip.order
    assert outcome["crashes"] == 0 and outcome["actions"] == 2
    (fault,) = _stream(tmp_path, schema.FAULT)
    assert fault[schema.FAULT_KIND] == "lost_contact" and fault[schema.FAULT_RADIUS] == 0.0
    assert read_marks(tmp_path) == []


def test_a_refused_action_with_the_tip_fine_fails_the_episode(RE, tmp_path):
    stm, _ = make_stm(RE)

    def refuse(value: int) -> None:
        raise RuntimeError("refused for another reason")

    callback_on_mock_put(stm.tip.pulse.command, refuse)
    with pytest.raises(FailedStatus):
        RE(condition_tip(stm, FirstOf(ActionKind.PULSE), ConstantAssessor(), max_actions=2))
