"""Typed records from event data, and the live tally that builds them from documents."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from spm_bluesky import schema
from spm_bluesky.autonomy.tally import SessionTally
from spm_bluesky.storage import (
    AssessmentRecord,
    DecisionRecord,
    Disc,
    FaultRecord,
    FrameRecord,
    StatusRecord,
    StepRecord,
    TruthRecord,
)

DECISION = {schema.DECISION_VERDICT: "debris", schema.DECISION_AREA_INDEX: 2,
            schema.DECISION_BLOCK_X: 1e-8, schema.DECISION_BLOCK_Y: -2e-8,
            schema.DECISION_BLOCK_RADIUS: 3e-9, schema.DECISION_CLOCK: 50.0,
            schema.DECISION_ELAPSED: 40.0, schema.DECISION_IMAGE: 7,
            schema.DECISION_GOOD_IMAGES: 3, schema.DECISION_CONSECUTIVE_BAD: 1,
            schema.DECISION_DEBRIS_RETRIES: 1, schema.DECISION_PEAK_TO_PEAK: 1e-9}
STEP = {schema.STEP_ACTION: "pulse_4V", schema.STEP_ACTION_INDEX: 3,
        schema.STATUS_CLOCK: 12.0, schema.STATUS_AREA_INDEX: 1, schema.STATUS_CRASH_COUNT: 0,
        schema.STEP_SPOT_X: 5e-8, schema.STEP_SPOT_Y: 6e-8, schema.STEP_FORBIDDEN_RADIUS: 2e-8}
FAULT = {schema.FAULT_KIND: "crash", schema.FAULT_X: 1e-8, schema.FAULT_Y: 2e-8,
         schema.FAULT_RADIUS: 1.5e-7, schema.FAULT_CLOCK: 9.0, schema.FAULT_CRASH_COUNT: 1}


def test_records_read_the_schema_keys() -> None:
    frame = FrameRecord.from_data("r", 1, {schema.SCAN_CLOCK: 5.0, schema.SCAN_AREA_INDEX: 2,
                                           schema.SCAN_CENTER_X: 1e-8,
                                           schema.SCAN_CENTER_Y: 0.0, schema.SCAN_SIZE: 1e-8})
    assert frame.disc() == Disc(2, 1e-8, 0.0, 5e-9)
    decision = DecisionRecord.from_data("r", 1, DECISION)
    assert decision.tip_belief is None  # a session recorded before the tip filter
    assert decision.disc() == Disc(2, 1e-8, -2e-8, 3e-9, "debris")
    assert DecisionRecord.from_data(
        "r", 1, {**DECISION, schema.DECISION_TIP_BELIEF: 0.7}).tip_belief == 0.7
    step = StepRecord.from_data("r", 4, {**STEP, schema.STEP_MASK: [1, 0, 1]})
    assert (step.name, step.action_index, step.disc()) == (
        "pulse_4V", 3, Disc(1, 5e-8, 6e-8, 2e-8, schema.ACTION))
    np.testing.assert_array_equal(step.mask, [1, 0, 1])
    fault = FaultRecord.from_data("r", 2, FAULT)
    assert fault.disc(area=4) == Disc(4, 1e-8, 2e-8, 1.5e-7, "crash")
    assert FaultRecord.from_data("r", 2, {**FAULT, schema.FAULT_RADIUS: 0.0}).disc(4) is None
    status = StatusRecord.from_data("r", 1, STEP)
    assert (status.clock, status.area, status.crash_count) == (12.0, 1, 0)


def test_assessment_record_keeps_every_class_and_truth_may_be_absent() -> None:
    judged = AssessmentRecord.from_data("r", 1, {
        schema.assessment_p("good"): 0.8, schema.assessment_p("blunt"): 0.2,
        schema.ASSESSMENT_LABEL: "good", schema.ASSESSMENT_MODEL_ID: "m1"})
    assert judged.probabilities == {"good": 0.8, "blunt": 0.2} and judged.p_good == 0.8
    assert math.isnan(AssessmentRecord.from_data("r", 1, {}).p_good)
    assert TruthRecord.from_data("r", 1, {schema.SIM_TIP_STATE: "blunt"}) == TruthRecord(
        "r", 1, "blunt")
    assert TruthRecord.from_data("r", 1, {schema.SIM_TIP_STATE: float("nan")}) is None


def _session_documents() -> list[tuple[str, dict[str, Any]]]:
    """A scan run: two frames, the first kept with a good tip, a retaken decision, a crash."""
    docs: list[tuple[str, dict[str, Any]]] = [
        ("start", {"uid": "run", "time": 0.0, schema.PLAN_NAME: schema.AUTONOMOUS_SCAN,
                   schema.AUTONOMY: {schema.AUTONOMY_START_CLOCK: 100.0}})]
    for stream in (schema.PRIMARY, schema.DECISION, schema.TRUTH, schema.FAULT):
        docs.append(("descriptor", {"uid": stream, "run_start": "run", "name": stream}))

    def event(stream: str, seq: int, data: dict[str, Any]) -> None:
        docs.append(("event", {"descriptor": stream, "seq_num": seq, "data": data,
                               "uid": f"{stream}{seq}{len(docs)}", "time": 0.0,
                               "timestamps": {}}))

    for seq, verdict in ((1, "kept"), (2, "bad")):
        event(schema.PRIMARY, seq, {schema.SCAN_IMAGE: [[0.0]],
                                    schema.SCAN_CLOCK: 100.0 + 60 * seq})
        event(schema.DECISION, seq, {**DECISION, schema.DECISION_VERDICT: verdict})
        event(schema.TRUTH, seq, {schema.SIM_TIP_STATE: "good"})
    event(schema.DECISION, 2, {**DECISION, schema.DECISION_VERDICT: "kept"})  # a retake
    event(schema.FAULT, 1, FAULT)
    return docs


def test_the_tally_counts_records_of_live_documents_once() -> None:
    tally = SessionTally()
    for name, doc in _session_documents():
        tally(name, doc)
    assert (tally.images, tally.kept, tally.truly_good, tally.crashes) == (2, 1, 1, 1)
    assert tally.first_clock == 100.0 and tally.tip_state == "good"
    assert tally.simulated_hours == pytest.approx((220.0 - 100.0) / 3600)
