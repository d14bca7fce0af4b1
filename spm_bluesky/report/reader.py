"""Read a session from Tiled into :class:`~spm_bluesky.report.session.SessionData`.

One table read per stream and run (the stream's scalar columns, the last take of every
``seq_num``: a suspender can make a plan take an event again), so a long session reads in
seconds. Frames are read only for the images asked for (:func:`fetch_images`). The
document schema is in ``docs/autonomy.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from spm_bluesky.autonomy.rules import Verdict
from spm_bluesky.autonomy.tally import CrashCounter
from spm_bluesky.report.session import (
    CONDITIONING,
    ActionRecord,
    Disc,
    Episode,
    ImageRecord,
    SessionData,
    StoredImage,
)
from spm_bluesky.storage.tiled import read_image_stream, read_stream_table, runs_by_session

if TYPE_CHECKING:
    import pandas as pd
    from bluesky_tiled_plugins.clients.catalog_of_bluesky_runs import CatalogOfBlueskyRuns
    from tiled.client.container import Container

#: Verdicts that block a disc worth showing on the map (kept and bad images block only their
#: own cell, which the map already shows).
DISC_VERDICTS = frozenset({Verdict.DEBRIS, Verdict.CRASH, Verdict.LOST_CONTACT})
#: Plans whose runs hold scanned images.
IMAGE_PLANS = frozenset({"autonomous_scan", "condition_tip"})
#: Plans whose runs hold only instrument status (coarse motion).
COARSE_PLANS = frozenset({"move_area", "approach", "withdraw"})


class SessionNotFound(LookupError):
    """No run in Tiled carries the session uid."""


class SessionSummary(NamedTuple):
    """A session found in the catalog: its uid, the runs seen, the first run's plan."""

    uid: str
    runs: int
    first_plan: str


def list_sessions(client: CatalogOfBlueskyRuns, limit: int = 20,
                  scan: int = 300) -> list[SessionSummary]:
    """The newest ``limit`` sessions among the newest ``scan`` runs (at most 300: one page
    of a Tiled search)."""
    found: dict[str, list[str]] = {}
    for run in client.values().tail(scan):
        start = run.metadata.get("start", {})
        uid = start.get("session_uid")
        if uid:
            found.setdefault(uid, []).append(start.get("plan_name", ""))
    return [SessionSummary(uid, len(plans), plans[0])
            for uid, plans in list(found.items())[-limit:]]


def load_session(client: CatalogOfBlueskyRuns, session_uid: str) -> SessionData:
    """Read every run of ``session_uid`` from Tiled into a :class:`SessionData`.

    Raises :class:`SessionNotFound` (with how to find sessions) if no run carries the uid.
    """
    runs = list(runs_by_session(client, session_uid).values())
    if not runs:
        raise SessionNotFound(
            f"no run in Tiled ({client.uri}) has session_uid {session_uid!r}. "
            "`spm-bluesky report --list` shows the newest sessions; in Python: "
            "{run.metadata['start'].get('session_uid') for run in client.values()}")
    first = runs[0].metadata["start"]
    config = first.get("autonomy", {})
    reader = _SessionReader(SessionData(session_uid, {
        "runs": len(runs), "twin_seed": first.get("twin_seed"),
        "model_ids": first.get("model_ids", {}), "autonomy": config,
        "first_time": _iso(first.get("time")),
        "last_time": _iso(runs[-1].metadata["start"].get("time"))}))
    for run in runs:
        reader.read(run)
    data = reader.data
    start_clock = config.get("start_clock")
    data.start_clock = float(start_clock) if start_clock is not None else \
        min(reader.clocks, default=0.0)
    data.end_clock = max(reader.clocks, default=data.start_clock)
    return data


def fetch_images(client: CatalogOfBlueskyRuns, records: Sequence[ImageRecord],
                 field: str = "stm-scan-image") -> list[StoredImage]:
    """The stored frames of ``records`` (one read per run), in the order given."""
    stacks: dict[str, dict[int, np.ndarray]] = {}
    for uid in dict.fromkeys(r.run_uid for r in records):
        stack = read_image_stream(client[uid], field)
        stacks[uid] = {int(s): image for s, image in zip(stack.seq_num, stack.images,
                                                           strict=True)}
    return [(r, stacks[r.run_uid][r.seq_num]) for r in records]


@dataclass
class _SessionReader:
    """Fills ``data`` run by run; collects every instrument clock seen (the session's span)."""

    data: SessionData
    clocks: list[float] = field(default_factory=list)
    crash_counter: CrashCounter = field(default_factory=CrashCounter)

    def read(self, run: Container) -> None:
        """Add what one run of the session holds."""
        plan = run.metadata["start"].get("plan_name", "")
        if plan in IMAGE_PLANS:
            self._images(run, plan)
        if plan == "condition_tip":
            self._episode(run)
        elif plan in COARSE_PLANS:
            self._coarse(run, plan)

    def _crash_seen(self, clock: float) -> None:
        self.data.crashes.append(clock)
        self.crash_counter.seen()

    def _crash_count(self, count: int, clock: float) -> None:
        self.data.crashes.extend([clock] * self.crash_counter.reading(count))

    def _images(self, run: Container, plan: str) -> None:
        """The images of one run, with their assessment, verdict and true class; faults."""
        primary = read_stream_table(run, "primary")
        if primary is None:
            return
        uid = run.metadata["start"]["uid"]
        assessment, truth = read_stream_table(run, "assessment"), read_stream_table(run, "truth")
        decision = read_stream_table(run, "decision") if plan == "autonomous_scan" else None
        for seq, row in primary.iterrows():
            judged = _row(assessment, seq)
            verdict_row = _row(decision, seq)
            verdict = str(_value(verdict_row, "decision-verdict", CONDITIONING))
            clock = float(row["stm-scan-clock"])
            area = int(row["stm-scan-area_index"])
            self.clocks.append(clock)
            self.data.images.append(ImageRecord(
                run_uid=uid, seq_num=int(seq), clock=clock, area=area,
                x=float(row["stm-scan-center_x"]), y=float(row["stm-scan-center_y"]),
                size=float(row["stm-scan-size"]),
                p_good=float(_value(judged, "assessment-p_good", float("nan"))),
                verdict=verdict, truth=_value(_row(truth, seq), "stm-sim-tip_state"),
                tip_belief=_belief(verdict_row)))
            if verdict in DISC_VERDICTS:
                self.data.discs.append(Disc(area, float(verdict_row["decision-block_x"]),
                                            float(verdict_row["decision-block_y"]),
                                            float(verdict_row["decision-block_radius"]),
                                            verdict))
                if verdict == Verdict.CRASH:
                    self._crash_seen(clock)
        fault = read_stream_table(run, "fault")
        if fault is None:
            return
        for _, row in fault.iterrows():
            kind, clock = str(row["fault-kind"]), float(row["fault-clock"])
            self.clocks.append(clock)
            if float(row["fault-radius"]) > 0:
                area = self.data.images[-1].area if self.data.images else 0
                self.data.discs.append(Disc(area, float(row["fault-x"]), float(row["fault-y"]),
                                            float(row["fault-radius"]), kind))
            if kind == Verdict.CRASH:
                self._crash_seen(clock)

    def _episode(self, run: Container) -> None:
        """A conditioning episode: its actions, the dips that crashed, its span and outcome."""
        primary, action = read_stream_table(run, "primary"), read_stream_table(run, "action")
        assessment = read_stream_table(run, "assessment")
        times = [] if primary is None else list(primary["stm-scan-clock"].astype(float))
        if action is not None:
            for _, row in action.iterrows():
                clock = float(row["stm-status-clock"])
                times.append(clock)
                area = int(row["stm-status-area_index"])
                x, y = float(row["decision-spot_x"]), float(row["decision-spot_y"])
                radius = float(row["decision-forbidden_radius"])
                self.data.actions.append(ActionRecord(clock, area, str(row["decision-action"]),
                                                      x, y, radius))
                self.data.discs.append(Disc(area, x, y, radius, "action"))
                self._crash_count(int(row["stm-status-crash_count"]), clock)
        if times:
            self.clocks.extend(times)
            p_last = float(assessment["assessment-p_good"].iloc[-1]) \
                if assessment is not None and len(assessment) else 0.0
            self.data.episodes.append(Episode(min(times), max(times),
                                              p_last > self.data.good_threshold))

    def _coarse(self, run: Container, plan: str) -> None:
        """An approach, withdrawal or area move: its clock and the crash counter."""
        status = read_stream_table(run, "primary")
        if status is None or not len(status):
            return
        clock = float(status["stm-status-clock"].iloc[0])
        self.clocks.extend(status["stm-status-clock"].astype(float))
        if plan == "move_area":
            self.data.area_moves.append(clock)
        for count in status["stm-status-crash_count"]:
            self._crash_count(int(count), clock)


def _row(table: pd.DataFrame | None, seq: Any) -> pd.Series | None:
    """The row of event ``seq``, or None if the stream has none."""
    return table.loc[seq] if table is not None and seq in table.index else None


def _value(row: pd.Series | None, key: str, default: Any = None) -> Any:
    """``row[key]``, or ``default`` when the row or the value is missing (None or NaN)."""
    value = row.get(key, default) if row is not None else default
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return default
    return value


def _belief(decision_row: Any) -> float | None:
    """The decision's P(tip good), None if it has none."""
    value = _value(decision_row, "decision-tip_belief", None)
    return None if value is None else float(value)


def _iso(timestamp: float | None) -> str:
    """A start document's time as ISO 8601 UTC to the second ('' if absent)."""
    if timestamp is None:
        return ""
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")
