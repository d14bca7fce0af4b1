"""Rebuild an autonomous session's state from what is durable, to resume it.

:func:`rebuild` reads the runs of one ``session_uid`` (docs/reference/data-model.md) from
Tiled (:class:`~spm_bluesky.storage.SessionReader`) and, with ``journal``, from the local
journal, which holds every document the session emitted, also those Tiled has not taken yet
(:class:`~spm_bluesky.storage.journal_runs.JournalRun` replaces the Tiled copy of a run).
Oldest first, the last take of every event (a suspender's retake has the same ``seq_num``),
it replays their decisions into a :class:`~spm_bluesky.autonomy.rules.SessionState`: the
approach area the tip is over, every disc blocked there (scanned frames, debris, crashes,
conditioning spots), the spiral position, the counters and the instrument time. Then the
journal's crash marks (made durable before the approach that follows a crash) add crashes
that no ``fault`` event recorded, and ``mask_file`` (the session's mask copy, saved after
every blocked disc) adds its blocked cells. Only scalars are read, never the images.

Crashes are counted from ``fault`` events (scan runs: the contact suspender; conditioning
episodes: a crash during an action) and from crash marks, each crash once: a mark and its
event carry the same instrument crash count and clock.
"""

from __future__ import annotations

from pathlib import Path

from bluesky_tiled_plugins.clients.catalog_of_bluesky_runs import CatalogOfBlueskyRuns

from spm_bluesky import schema
from spm_bluesky.autonomy.rules import UNKNOWN_TIP, SessionConfig, SessionState, Verdict
from spm_bluesky.domain.area import CELL_SIZE, AreaMask
from spm_bluesky.storage import Disc, FrameRecord, SessionNotFound, SessionReader
from spm_bluesky.storage.journal import Record, read_marks
from spm_bluesky.storage.journal_runs import journal_runs
from spm_bluesky.storage.read import RunRecords

__all__ = ["CRASH_MARK", "SessionNotFound", "crash_mark", "rebuild"]

#: The journal mark a session makes before it approaches again after a crash (in a scan
#: run or during a conditioning episode's action).
CRASH_MARK = "crash"


def crash_mark(session_uid: str, area: int, x: float, y: float, radius: float, clock: float,
               crash_count: int) -> dict[str, object]:
    """The body of a crash mark (the fields :func:`rebuild` reads back)."""
    return {schema.SESSION_UID: session_uid, "area": int(area), "x": float(x), "y": float(y),
            "radius": float(radius), "clock": float(clock), "crash_count": int(crash_count)}


class _Rebuild:
    """Feeds one run after another into a state; :meth:`result` gives the state."""

    def __init__(self, session_uid: str) -> None:
        self.state = SessionState(session_uid)
        self.discs: list[Disc] = []
        self.area_index = 0
        self.config: SessionConfig | None = None
        #: (instrument crash count, clock) of every crash a ``fault`` event recorded.
        self.crashes_seen: set[tuple[int, float]] = set()

    def crash_marks(self, marks: list[Record]) -> None:
        """Count and block the crashes marked in the journal that no event recorded."""
        for mark in marks:
            body = mark.body
            key = (int(body["crash_count"]), round(float(body["clock"]), 6))
            if body.get(schema.SESSION_UID) != self.state.session_uid or key in self.crashes_seen:
                continue
            self.crashes_seen.add(key)
            self.block(body["x"], body["y"], body["radius"], body["area"])
            self.state.crashes += 1
            self.state.observe_clock(float(body["clock"]))

    def block(self, x: float, y: float, radius: float, area_index: int | None = None) -> None:
        area = self.area_index if area_index is None else int(area_index)
        self.discs.append(Disc(area, float(x), float(y), float(radius)))

    def frames(self, frames: list[FrameRecord], size: float) -> None:
        """Count ``frames`` and block ``size / 2`` around each."""
        for frame in frames:
            self.area_index = frame.area
            self.block(frame.x, frame.y, size / 2)
            self.state.observe_clock(frame.clock)
        self.state.images += len(frames)

    def scan_run(self, run: RunRecords, size: float) -> None:
        state = self.state
        decided = run.decisions()
        for decision in decided:
            verdict = Verdict(decision.verdict)
            self.area_index = decision.area
            self.block(decision.block_x, decision.block_y, decision.block_radius)
            state.images = decision.image
            state.good_images = decision.good_images
            state.consecutive_bad = decision.consecutive_bad
            state.debris_retries = decision.debris_retries
            # Sessions recorded before the tip filter have no belief: start it unknown.
            state.tip_belief = (UNKNOWN_TIP if decision.tip_belief is None
                                else decision.tip_belief)
            state.crashes += verdict is Verdict.CRASH
            state.count_unsure(verdict, (self.config or SessionConfig(images=1)).unsure_limit)
            state.clock = decision.clock
            state.elapsed = decision.elapsed
        self.faults(run)
        # A stop between an image's primary event and its decision (a pause at the
        # checkpoint after the image): the frame is used, its verdict unknown.
        self.frames([f for f in run.frames() if f.seq_num > len(decided)], size)

    def faults(self, run: RunRecords) -> None:
        """Block and count the run's ``fault`` events (crashes, lost contact)."""
        for fault in run.faults():
            if fault.radius > 0:
                self.block(fault.x, fault.y, fault.radius)
            self.state.crashes += fault.kind == Verdict.CRASH.value
            self.crashes_seen.add((fault.crash_count, round(fault.clock, 6)))

    def condition_run(self, run: RunRecords, size: float) -> None:
        state = self.state
        self.frames(run.frames(), size)
        steps = run.steps()
        for step in steps:
            self.block(step.x, step.y, step.radius)
        self.faults(run)
        state.episodes += 1
        state.actions += len(steps)
        state.consecutive_bad = 0
        state.tip_belief = UNKNOWN_TIP

    def coarse_run(self, run: RunRecords) -> None:
        statuses = run.statuses()
        if not statuses:
            return
        last = statuses[-1]
        self.state.observe_clock(last.clock)
        if run.plan_name == schema.MOVE_AREA:
            self.area_index = last.area
            self.state.consecutive_bad = 0
            self.state.debris_retries = 0

    def result(self, mask_file: Path | None = None) -> SessionState:
        state = self.state
        mask = AreaMask(area_index=self.area_index, cell_size=CELL_SIZE)
        for disc in self.discs:
            if disc.area == self.area_index:
                mask.block_disc(disc.x, disc.y, disc.radius)
                mask.position = (disc.x, disc.y)
        if mask_file is not None and Path(mask_file).exists():
            saved = AreaMask.load(mask_file)
            if saved.area_index == mask.area_index and saved.blocked.shape == mask.blocked.shape:
                mask.blocked |= saved.blocked
        state.mask = mask
        state.config = self.config
        return state


def _runs(client: CatalogOfBlueskyRuns | None, session_uid: str,
          journal: Path | None) -> list[RunRecords]:
    """The session's runs, oldest first: from Tiled, each replaced by its journal copy."""
    runs: dict[str, RunRecords] = {}
    if client is not None:
        try:
            runs.update((run.uid, run) for run in SessionReader(client, session_uid))
        except SessionNotFound:
            if journal is None:
                raise
    if journal is not None:
        runs.update((run.uid, run) for run in journal_runs(journal, session_uid))
    return sorted(runs.values(), key=lambda run: run.time)


def rebuild(client: CatalogOfBlueskyRuns | None, session_uid: str, *,
            journal: Path | None = None, mask_file: Path | None = None) -> SessionState:
    """The state of session ``session_uid`` as its durable records leave it (module doc).

    ``client`` (None: journal only) is Tiled; ``journal`` the journal directory.
    Raises SessionNotFound if neither holds a run of an autonomous session with this uid.
    """
    builder = _Rebuild(session_uid)
    runs = 0
    for run in _runs(client, session_uid, journal):
        if run.autonomy is None:
            continue
        builder.config = config = SessionConfig.from_md(run.autonomy)
        runs = max(runs, run.autonomy_run + 1)
        if run.plan_name == schema.AUTONOMOUS_SCAN:
            builder.scan_run(run, config.size)
        elif run.plan_name == schema.CONDITION_TIP:
            builder.condition_run(run, config.size)
        elif run.plan_name in schema.COARSE_PLANS:
            builder.coarse_run(run)
    if builder.config is None:
        where = "Tiled" if journal is None else "Tiled or the journal"
        raise SessionNotFound(f"{where} holds no run of an autonomous session {session_uid!r}")
    if journal is not None:
        builder.crash_marks(read_marks(journal, CRASH_MARK))
    state = builder.result(mask_file)
    state.runs = runs
    return state
