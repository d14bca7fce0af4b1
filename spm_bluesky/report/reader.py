"""Read a session from Tiled into :class:`~spm_bluesky.report.session.SessionData`.

The session's runs come from :class:`~spm_bluesky.storage.SessionReader` as typed records
(one table read per stream and run, the last take of every ``seq_num``: a suspender can
make a plan take an event again), so a long session reads in seconds. Frames are read only
for the images asked for (:func:`fetch_images`). The data model is
:mod:`spm_bluesky.schema`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, cast

import numpy as np

from spm_bluesky import schema
from spm_bluesky.autonomy.rules import Verdict
from spm_bluesky.autonomy.tally import CrashCounter
from spm_bluesky.report.session import (
    CONDITIONING,
    IMPORTED,
    ConditioningEpisode,
    ImageRecord,
    SessionData,
    StoredImage,
)
from spm_bluesky.storage import SessionReader, StoredRun, read_image_stream

if TYPE_CHECKING:
    from bluesky_tiled_plugins.clients.catalog_of_bluesky_runs import CatalogOfBlueskyRuns

#: Verdicts that block a disc worth showing on the map (kept and bad images block only their
#: own cell, which the map already shows).
DISC_VERDICTS = frozenset({Verdict.DEBRIS, Verdict.CRASH, Verdict.LOST_CONTACT})


def load_session(client: CatalogOfBlueskyRuns, session_uid: str) -> SessionData:
    """Read every run of ``session_uid`` from Tiled into a :class:`SessionData`.

    Raises :class:`~spm_bluesky.storage.SessionNotFound` (with how to find sessions) if no
    run carries the uid.
    """
    return build_session(session_uid, SessionReader(client, session_uid).runs)


def build_session(session_uid: str, runs: Sequence[StoredRun]) -> SessionData:
    """The session's data from its runs already read, oldest first (what
    :func:`load_session` does once it has read them; the console keeps runs it has read)."""
    first, last = runs[0], runs[-1]
    builder = _SessionBuilder(SessionData(
        session_uid, first.metadata, runs=len(runs), first_time=_iso(first.time),
        last_time=_iso(last.time)))
    for run in runs:
        builder.read(run)
    data = builder.data
    start_clock = data.autonomy.get(schema.AUTONOMY_START_CLOCK)
    data.start_clock = float(start_clock) if start_clock is not None else \
        min(builder.clocks, default=0.0)
    data.end_clock = max(builder.clocks, default=data.start_clock)
    return data


def fetch_images(client: CatalogOfBlueskyRuns,
                 records: Sequence[ImageRecord]) -> list[StoredImage]:
    """The stored frames of ``records`` (one read per run), in the order given."""
    stacks: dict[str, dict[int, np.ndarray]] = {}
    for uid in dict.fromkeys(r.run_uid for r in records):
        stack = read_image_stream(client[uid])
        stacks[uid] = {int(s): image for s, image in zip(stack.seq_num, stack.images,
                                                           strict=True)}
    return [(r, stacks[r.run_uid][r.seq_num]) for r in records]


@dataclass
class _SessionBuilder:
    """Fills ``data`` run by run; collects every instrument clock seen (the session's span)."""

    data: SessionData
    clocks: list[float] = field(default_factory=list)
    crash_counter: CrashCounter = field(default_factory=CrashCounter)

    def read(self, run: StoredRun) -> None:
        """Add what one run of the session holds."""
        images = self._images(run) if run.plan_name in schema.IMAGE_PLANS else []
        if run.plan_name == schema.CONDITION_TIP:
            self._episode(run, images)
        elif run.plan_name in schema.COARSE_PLANS:
            self._coarse(run)

    def _crash_seen(self, clock: float) -> None:
        self.data.crashes.append(clock)
        self.crash_counter.seen()

    def _crash_count(self, count: int, clock: float) -> None:
        self.data.crashes.extend([clock] * self.crash_counter.reading(count))

    def _images(self, run: StoredRun) -> list[ImageRecord]:
        """The images of one run, with their assessment, verdict and true class; faults.
        Returns the run's images."""
        frames = run.frames()
        judged = {a.seq_num: a for a in run.assessments()}
        unsure = {seq_num: float(data.get(schema.ASSESSMENT_UNSURE_SCORE, float("nan")))
                  for seq_num, data in run.rows(schema.ASSESSMENT)}
        truth = {t.seq_num: t.tip_state for t in run.truths()}
        decided = ({d.seq_num: d for d in run.decisions()}
                   if run.plan_name == schema.AUTONOMOUS_SCAN else {})
        peak_to_peak = {seq_num: float(data[schema.DECISION_PEAK_TO_PEAK])
                        for seq_num, data in run.rows(schema.DECISION)
                        if schema.DECISION_PEAK_TO_PEAK in data} if decided else {}
        config = dict(run.metadata.get(schema.AUTONOMY) or {})
        keep_threshold = _optional_float(config.get("keep_threshold"))
        debris_threshold = _optional_float(config.get("debris_threshold"))
        imported = run.plan_name == schema.IMPORT_FILES
        sources = list(run.metadata.get(schema.SOURCE_PATH) or []) if imported else []
        records: list[ImageRecord] = []
        for frame in frames:
            decision = decided.get(frame.seq_num)
            assessment = judged.get(frame.seq_num)
            verdict = (decision.verdict if decision is not None
                       else IMPORTED if imported else CONDITIONING)
            source = (str(sources[frame.seq_num - 1])
                      if 0 < frame.seq_num <= len(sources) else None)
            self.clocks.append(frame.clock)
            records.append(ImageRecord(
                run_uid=frame.run_uid, seq_num=frame.seq_num, clock=frame.clock,
                area=frame.area, x=frame.x, y=frame.y, size=frame.size,
                p_good=assessment.p_good if assessment is not None else float("nan"),
                verdict=verdict, truth=truth.get(frame.seq_num),
                tip_belief=decision.tip_belief if decision is not None else None,
                source=source, unsure_score=unsure.get(frame.seq_num, float("nan")),
                peak_to_peak=peak_to_peak.get(frame.seq_num) if decision else None,
                keep_threshold=keep_threshold if decision else None,
                debris_threshold=debris_threshold if decision else None))
            if decision is not None and verdict in DISC_VERDICTS:
                self.data.discs.append(decision.disc())
                if verdict == Verdict.CRASH:
                    self._crash_seen(frame.clock)
        self.data.images.extend(records)
        for fault in run.faults():
            self.clocks.append(fault.clock)
            disc = fault.disc(self.data.images[-1].area if self.data.images else 0)
            if disc is not None:
                self.data.discs.append(disc)
            if fault.kind == Verdict.CRASH:
                self._crash_seen(fault.clock)
        return records

    def _episode(self, run: StoredRun, images: list[ImageRecord]) -> None:
        """A conditioning episode: its actions, the dips that crashed, its span and outcome,
        its first and last of ``images`` (the run's)."""
        times = [frame.clock for frame in run.frames()]
        for step in run.steps():
            times.append(step.clock)
            self.data.actions.append(step)
            self.data.discs.append(step.disc())
            self._crash_count(step.crash_count, step.clock)
        if times:
            self.clocks.extend(times)
            assessments = run.assessments()
            p_last = assessments[-1].p_good if assessments else 0.0
            self.data.episodes.append(ConditioningEpisode(
                min(times), max(times), p_last > self.data.good_threshold,
                before=images[0] if images else None,
                after=images[-1] if len(images) > 1 else None))

    def _coarse(self, run: StoredRun) -> None:
        """An approach, withdrawal or area move: its clock and the crash counter."""
        statuses = run.statuses()
        if not statuses:
            return
        clock = statuses[0].clock
        self.clocks.extend(status.clock for status in statuses)
        if run.plan_name == schema.MOVE_AREA:
            self.data.area_moves.append(clock)
        for status in statuses:
            self._crash_count(status.crash_count, clock)


def _optional_float(value: object) -> float | None:
    """A recorded number, or None when it was not recorded."""
    return None if value is None else float(cast(float, value))


def _iso(timestamp: float | None) -> str:
    """A start document's time as ISO 8601 UTC to the second ('' if absent)."""
    if timestamp is None:
        return ""
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")
