"""Typed records of stored events: one dataclass per kind of event, built in one place.

Every reader of the data model (resume, the report, the live tally, the agent's learning
from stored runs) turns an event's ``data`` (a live event's, or a row of a stream's table
read back from Tiled: both are keyed by data key) into these records with their
``from_data`` constructors, which are the only code that looks up a data key
(:mod:`spm_bluesky.schema`). Lengths are metres, clocks instrument seconds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from spm_bluesky import schema

#: An event's data, or one row of a stream's table: data key -> value.
EventData = Mapping[str, Any]


def _optional_float(data: EventData, key: str) -> float | None:
    """``data[key]`` as a float; None when absent, None or NaN (a field an older run lacks)."""
    value = data.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


def _optional_array(data: EventData, key: str) -> np.ndarray | None:
    value = data.get(key)
    return None if value is None else np.asarray(value)


@dataclass(frozen=True)
class Disc:
    """A disc the loop blocked in an approach area (a frame, debris, a crash, an action ...).

    ``reason`` is the verdict, the fault kind or ``"action"``; ``""`` for a plain frame.
    """

    area: int
    x: float
    y: float
    radius: float
    reason: str = ""


@dataclass(frozen=True)
class FrameRecord:
    """A scanned frame's place and time (a ``primary`` event of an image run)."""

    run_uid: str
    seq_num: int
    clock: float
    area: int
    x: float
    y: float
    size: float

    @classmethod
    def from_data(cls, run_uid: str, seq_num: int, data: EventData) -> FrameRecord:
        """The record of event ``seq_num`` of run ``run_uid`` (each record type has one)."""
        return cls(run_uid, int(seq_num), float(data[schema.SCAN_CLOCK]),
                   int(data[schema.SCAN_AREA_INDEX]), float(data[schema.SCAN_CENTER_X]),
                   float(data[schema.SCAN_CENTER_Y]), float(data[schema.SCAN_SIZE]))

    def disc(self) -> Disc:
        """The frame's own disc: ``size / 2`` around its centre."""
        return Disc(self.area, self.x, self.y, self.size / 2)


@dataclass(frozen=True)
class StatusRecord:
    """The instrument's status (a ``primary`` event of a coarse run)."""

    run_uid: str
    seq_num: int
    clock: float
    area: int
    crash_count: int

    @classmethod
    def from_data(cls, run_uid: str, seq_num: int, data: EventData) -> StatusRecord:
        return cls(run_uid, int(seq_num), float(data[schema.STATUS_CLOCK]),
                   int(data[schema.STATUS_AREA_INDEX]), int(data[schema.STATUS_CRASH_COUNT]))


@dataclass(frozen=True)
class AssessmentRecord:
    """The assessor's judgement of one frame (an ``assessment`` event)."""

    run_uid: str
    seq_num: int
    #: Tip class -> probability, for every class the assessor answered.
    probabilities: Mapping[str, float]
    label: str
    model_id: str

    @property
    def p_good(self) -> float:
        """p(good), NaN when not recorded."""
        return self.probabilities.get("good", float("nan"))

    @classmethod
    def from_data(cls, run_uid: str, seq_num: int, data: EventData) -> AssessmentRecord:
        prefix = schema.ASSESSMENT_P_PREFIX
        probabilities = {key[len(prefix):]: float(value) for key, value in data.items()
                         if key.startswith(prefix)}
        return cls(run_uid, int(seq_num), probabilities,
                   str(data.get(schema.ASSESSMENT_LABEL, "")),
                   str(data.get(schema.ASSESSMENT_MODEL_ID, "")))


@dataclass(frozen=True)
class DecisionRecord:
    """The loop's verdict on one frame and its counters after it (a ``decision`` event)."""

    run_uid: str
    seq_num: int
    #: An :class:`~spm_bluesky.autonomy.rules.Verdict` value.
    verdict: str
    area: int
    block_x: float
    block_y: float
    block_radius: float
    clock: float
    elapsed: float
    image: int
    good_images: int
    consecutive_bad: int
    debris_retries: int
    #: P(tip good) after the frame; None in sessions recorded before the tip filter.
    tip_belief: float | None

    @classmethod
    def from_data(cls, run_uid: str, seq_num: int, data: EventData) -> DecisionRecord:
        return cls(run_uid, int(seq_num), str(data[schema.DECISION_VERDICT]),
                   int(data[schema.DECISION_AREA_INDEX]), float(data[schema.DECISION_BLOCK_X]),
                   float(data[schema.DECISION_BLOCK_Y]),
                   float(data[schema.DECISION_BLOCK_RADIUS]),
                   float(data[schema.DECISION_CLOCK]), float(data[schema.DECISION_ELAPSED]),
                   int(data[schema.DECISION_IMAGE]), int(data[schema.DECISION_GOOD_IMAGES]),
                   int(data[schema.DECISION_CONSECUTIVE_BAD]),
                   int(data[schema.DECISION_DEBRIS_RETRIES]),
                   _optional_float(data, schema.DECISION_TIP_BELIEF))

    def disc(self) -> Disc:
        """The disc the verdict blocked."""
        return Disc(self.area, self.block_x, self.block_y, self.block_radius, self.verdict)


@dataclass(frozen=True)
class StepRecord:
    """One conditioning step (an ``action`` event): the action, where, and the status after."""

    run_uid: str
    seq_num: int
    #: The action's name and its index in the action set.
    name: str
    action_index: int
    #: The instrument's clock, approach area and crash counter after the action.
    clock: float
    area: int
    crash_count: int
    #: The spot the action was applied at and the disc it blocked there.
    x: float
    y: float
    radius: float
    #: The action mask the step was chosen under and the policy's values (arrays; None when
    #: read from the stream's table alone).
    mask: np.ndarray | None = None
    values: np.ndarray | None = None

    @classmethod
    def from_data(cls, run_uid: str, seq_num: int, data: EventData) -> StepRecord:
        return cls(run_uid, int(seq_num), str(data[schema.STEP_ACTION]),
                   int(data[schema.STEP_ACTION_INDEX]), float(data[schema.STATUS_CLOCK]),
                   int(data[schema.STATUS_AREA_INDEX]), int(data[schema.STATUS_CRASH_COUNT]),
                   float(data[schema.STEP_SPOT_X]), float(data[schema.STEP_SPOT_Y]),
                   float(data[schema.STEP_FORBIDDEN_RADIUS]),
                   _optional_array(data, schema.STEP_MASK),
                   _optional_array(data, schema.STEP_VALUES))

    def disc(self) -> Disc:
        """The disc blocked around the action's spot."""
        return Disc(self.area, self.x, self.y, self.radius, schema.ACTION)


@dataclass(frozen=True)
class FaultRecord:
    """A fault a suspender handled (a ``fault`` event) and the disc it blocked."""

    run_uid: str
    seq_num: int
    #: ``crash``, ``lost_contact`` or ``ioc_disconnect``.
    kind: str
    x: float
    y: float
    radius: float
    clock: float
    crash_count: int

    @classmethod
    def from_data(cls, run_uid: str, seq_num: int, data: EventData) -> FaultRecord:
        return cls(run_uid, int(seq_num), str(data[schema.FAULT_KIND]),
                   float(data[schema.FAULT_X]), float(data[schema.FAULT_Y]),
                   float(data[schema.FAULT_RADIUS]), float(data[schema.FAULT_CLOCK]),
                   int(data[schema.FAULT_CRASH_COUNT]))

    def disc(self, area: int) -> Disc | None:
        """The disc blocked in approach area ``area`` (the fault does not record it); None
        when the fault blocked nothing."""
        return Disc(area, self.x, self.y, self.radius, self.kind) if self.radius > 0 else None


@dataclass(frozen=True)
class TruthRecord:
    """The twin's true tip class at one frame (a ``truth`` event; never used to decide)."""

    run_uid: str
    seq_num: int
    tip_state: str

    @classmethod
    def from_data(cls, run_uid: str, seq_num: int, data: EventData) -> TruthRecord | None:
        """The record, or None when the event does not hold the tip state."""
        value = data.get(schema.SIM_TIP_STATE)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None
        return cls(run_uid, int(seq_num), str(value))
