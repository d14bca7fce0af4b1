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
from typing import TYPE_CHECKING

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
    session = SessionReader(client, session_uid)
    first, last = session.runs[0], session.runs[-1]
    reader = _SessionBuilder(SessionData(
        session_uid, first.metadata, runs=len(session), first_time=_iso(first.time),
        last_time=_iso(last.time)))
    for run in session:
        reader.read(run)
    data = reader.data
    start_clock = data.autonomy.get(schema.AUTONOMY_START_CLOCK)
    data.start_clock = float(start_clock) if start_clock is not None else \
        min(reader.clocks, default=0.0)
    data.end_clock = max(reader.clocks, default=data.start_clock)
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
        if run.plan_name in schema.IMAGE_PLANS:
            self._images(run)
        if run.plan_name == schema.CONDITION_TIP:
            self._episode(run)
        elif run.plan_name in schema.COARSE_PLANS:
            self._coarse(run)

    def _crash_seen(self, clock: float) -> None:
        self.data.crashes.append(clock)
        self.crash_counter.seen()

    def _crash_count(self, count: int, clock: float) -> None:
        self.data.crashes.extend([clock] * self.crash_counter.reading(count))

    def _images(self, run: StoredRun) -> None:
        """The images of one run, with their assessment, verdict and true class; faults."""
        frames = run.frames()
        judged = {a.seq_num: a for a in run.assessments()}
        unsure = {seq_num: float(data.get(schema.ASSESSMENT_UNSURE_SCORE, float("nan")))
                  for seq_num, data in run.rows(schema.ASSESSMENT)}
        truth = {t.seq_num: t.tip_state for t in run.truths()}
        decided = ({d.seq_num: d for d in run.decisions()}
                   if run.plan_name == schema.AUTONOMOUS_SCAN else {})
        imported = run.plan_name == schema.IMPORT_FILES
        sources = list(run.metadata.get(schema.SOURCE_PATH) or []) if imported else []
        for frame in frames:
            decision = decided.get(frame.seq_num)
            assessment = judged.get(frame.seq_num)
            verdict = (decision.verdict if decision is not None
                       else IMPORTED if imported else CONDITIONING)
            source = (str(sources[frame.seq_num - 1])
                      if 0 < frame.seq_num <= len(sources) else None)
            self.clocks.append(frame.clock)
            self.data.images.append(ImageRecord(
                run_uid=frame.run_uid, seq_num=frame.seq_num, clock=frame.clock,
                area=frame.area, x=frame.x, y=frame.y, size=frame.size,
                p_good=assessment.p_good if assessment is not None else float("nan"),
                verdict=verdict, truth=truth.get(frame.seq_num),
                tip_belief=decision.tip_belief if decision is not None else None,
                source=source, unsure_score=unsure.get(frame.seq_num, float("nan"))))
            if decision is not None and verdict in DISC_VERDICTS:
                self.data.discs.append(decision.disc())
                if verdict == Verdict.CRASH:
                    self._crash_seen(frame.clock)
        for fault in run.faults():
            self.clocks.append(fault.clock)
            disc = fault.disc(self.data.images[-1].area if self.data.images else 0)
            if disc is not None:
                self.data.discs.append(disc)
            if fault.kind == Verdict.CRASH:
                self._crash_seen(fault.clock)

    def _episode(self, run: StoredRun) -> None:
        """A conditioning episode: its actions, the dips that crashed, its span and outcome."""
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
                min(times), max(times), p_last > self.data.good_threshold))

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


def _iso(timestamp: float | None) -> str:
    """A start document's time as ISO 8601 UTC to the second ('' if absent)."""
    if timestamp is None:
        return ""
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")
