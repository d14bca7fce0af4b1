"""Rebuild an autonomous session's state from Tiled alone, to resume it.

:func:`rebuild` reads the runs of one ``session_uid`` (docs/autonomy.md), oldest first,
keeping the last take of every event (a suspender's retake has the same ``seq_num``), and
replays their decisions into a :class:`~spm_bluesky.autonomy.rules.SessionState`: the
approach area the tip is over, every disc blocked there (scanned frames, debris, crashes,
conditioning spots), the spiral position, the counters and the instrument time. Only the
scalar tables are read, never the images. A run cut off by a crash of the Python process
counts with the events that reached Tiled.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pandas as pd
from bluesky_tiled_plugins.clients.catalog_of_bluesky_runs import CatalogOfBlueskyRuns
from tiled.client.container import Container

from spm_bluesky.autonomy.rules import UNKNOWN_TIP, SessionConfig, SessionState, Verdict
from spm_bluesky.domain.area import CELL_SIZE, AreaMask
from spm_bluesky.storage.tiled import read_stream_table, runs_by_session


class SessionNotFound(LookupError):
    """No run in Tiled carries the session uid (or none of an autonomous session)."""


@dataclass(frozen=True)
class Disc:
    """A blocked disc (m) in one approach area."""

    area_index: int
    x: float
    y: float
    radius: float


def stream_table(run: Container, stream: str) -> pd.DataFrame:
    """:func:`~spm_bluesky.storage.tiled.read_stream_table` with ``seq_num`` as a column and ``_``
    for ``-`` in the column names (``stm_scan_clock``); empty if the run has no such stream."""
    table = read_stream_table(run, stream)
    if table is None or table.empty:
        return pd.DataFrame()
    return table.reset_index().rename(columns=lambda c: c.replace("-", "_"))


class _Rebuild:
    """Feeds one run after another into a state; :meth:`state` gives the result."""

    def __init__(self, session_uid: str) -> None:
        self.state = SessionState(session_uid)
        self.discs: list[Disc] = []
        self.area_index = 0
        self.config: SessionConfig | None = None

    @property
    def crash_radius(self) -> float:
        """The session's crash disc (m)."""
        return (self.config or SessionConfig(images=1)).crash_radius

    def block(self, x: float, y: float, radius: float, area_index: int | None = None) -> None:
        area = self.area_index if area_index is None else int(area_index)
        self.discs.append(Disc(area, float(x), float(y), float(radius)))

    def frames(self, primary: pd.DataFrame, size: float) -> None:
        """Count frames of a ``primary`` table and block ``size / 2`` around each."""
        for row in primary.itertuples(index=False):
            data = row._asdict()
            self.area_index = int(data["stm_scan_area_index"])
            self.block(data["stm_scan_center_x"], data["stm_scan_center_y"], size / 2)
            self.state.observe_clock(float(data["stm_scan_clock"]))
        self.state.images += len(primary)

    def scan_run(self, run: Container, size: float) -> None:
        state = self.state
        decided = stream_table(run, "decision")
        for row in decided.itertuples(index=False):
            data = row._asdict()
            verdict = Verdict(data["decision_verdict"])
            self.area_index = int(data["decision_area_index"])
            self.block(data["decision_block_x"], data["decision_block_y"],
                       data["decision_block_radius"])
            state.images = int(data["decision_image"])
            state.good_images = int(data["decision_good_images"])
            state.consecutive_bad = int(data["decision_consecutive_bad"])
            state.debris_retries = int(data["decision_debris_retries"])
            # Sessions recorded before the tip filter have no belief: start it unknown.
            state.tip_belief = float(data.get("decision_tip_belief", UNKNOWN_TIP))
            state.crashes += verdict is Verdict.CRASH
            state.clock = float(data["decision_clock"])
            state.elapsed = float(data["decision_elapsed"])
        for row in stream_table(run, "fault").itertuples(index=False):
            data = row._asdict()
            if data["fault_radius"] > 0:
                self.block(data["fault_x"], data["fault_y"], data["fault_radius"])
            state.crashes += data["fault_kind"] == Verdict.CRASH.value
        # A stop between an image's primary event and its decision (a pause at the
        # checkpoint after the image): the frame is used, its verdict unknown.
        primary = stream_table(run, "primary")
        self.frames(primary[primary["seq_num"] > len(decided)] if len(primary) else primary,
                    size)

    def condition_run(self, run: Container, size: float) -> None:
        state = self.state
        self.frames(stream_table(run, "primary"), size)
        actions = stream_table(run, "action")
        crash_count = None
        for row in actions.itertuples(index=False):
            data = row._asdict()
            self.block(data["decision_spot_x"], data["decision_spot_y"],
                       data["decision_forbidden_radius"])
            count = int(data["stm_status_crash_count"])
            if crash_count is not None and count > crash_count:
                self.block(data["decision_spot_x"], data["decision_spot_y"],
                           self.crash_radius)
                state.crashes += count - crash_count
            crash_count = count
        state.episodes += 1
        state.actions += len(actions)
        state.consecutive_bad = 0
        state.tip_belief = UNKNOWN_TIP

    def coarse_run(self, run: Container, plan_name: str) -> None:
        primary = stream_table(run, "primary")
        if primary.empty:
            return
        last = primary.iloc[-1]
        self.state.observe_clock(float(last["stm_status_clock"]))
        if plan_name == "move_area":
            self.area_index = int(last["stm_status_area_index"])
            self.state.consecutive_bad = 0
            self.state.debris_retries = 0

    def result(self) -> SessionState:
        state = self.state
        mask = AreaMask(area_index=self.area_index, cell_size=CELL_SIZE)
        for disc in self.discs:
            if disc.area_index == self.area_index:
                mask.block_disc(disc.x, disc.y, disc.radius)
                mask.position = (disc.x, disc.y)
        state.mask = mask
        state.config = self.config
        return state


def session_runs(client: CatalogOfBlueskyRuns, session_uid: str) -> Iterator[Container]:
    """The session's runs, oldest first."""
    yield from runs_by_session(client, session_uid).values()


def rebuild(client: CatalogOfBlueskyRuns, session_uid: str) -> SessionState:
    """The state of session ``session_uid`` as its runs in Tiled leave it (see module doc).

    Raises SessionNotFound if Tiled holds no run of an autonomous session with this uid.
    """
    builder = _Rebuild(session_uid)
    runs = 0
    for run in session_runs(client, session_uid):
        start: dict[str, Any] = run.metadata["start"]
        if "autonomy" not in start:
            continue
        builder.config = SessionConfig.from_md(start["autonomy"])
        runs = max(runs, int(start.get("autonomy_run", 0)) + 1)
        plan_name = start.get("plan_name")
        if plan_name == "autonomous_scan":
            builder.scan_run(run, builder.config.size)
        elif plan_name == "condition_tip":
            builder.condition_run(run, builder.config.size)
        elif plan_name in ("move_area", "approach", "withdraw"):
            builder.coarse_run(run, plan_name)
    if builder.config is None:
        raise SessionNotFound(f"Tiled holds no run of an autonomous session {session_uid!r}")
    state = builder.result()
    state.runs = runs
    return state
