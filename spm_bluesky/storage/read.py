"""Reading stored runs back: a session's runs as typed records, and their documents.

:class:`SessionReader` finds a session's runs (oldest first) and :class:`StoredRun` gives
each run's streams as the records of :mod:`spm_bluesky.storage.records`, reading only the
streams' tables (one request per stream) unless arrays are asked for. Every take of an
event but the last is dropped: a suspender rewinds a plan to its last checkpoint and takes
the points again with the same ``seq_num``. :func:`feed_documents` sends a stored run's
documents to a callback, as the RunEngine sent them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import numpy as np
import pandas as pd
from bluesky_tiled_plugins.clients.catalog_of_bluesky_runs import CatalogOfBlueskyRuns
from event_model import unpack_event_page
from event_model.documents import Document, Event, EventDescriptor, EventPage, RunStart
from tiled.client.container import Container
from tiled.queries import Eq

from spm_bluesky import schema
from spm_bluesky.storage.records import (
    AssessmentRecord,
    DecisionRecord,
    EventData,
    FaultRecord,
    FrameRecord,
    StatusRecord,
    StepRecord,
    TruthRecord,
)
from spm_bluesky.storage.writer import DocumentCallback

#: A record type built from one event's data (``from_data``).
R = TypeVar("R")


class SessionNotFound(LookupError):
    """No run in Tiled carries the session uid (or none of an autonomous session)."""


def runs_by_session(client: CatalogOfBlueskyRuns, session_uid: str) -> CatalogOfBlueskyRuns:
    """The runs whose start document has this ``session_uid``, oldest first (lazy container)."""
    return client.search(Eq(schema.SESSION_UID_QUERY, session_uid)).sort(
        (schema.START_TIME_QUERY, 1))


def runs_of_plan(client: CatalogOfBlueskyRuns, plan_name: str,
                 session_uid: str | None = None) -> CatalogOfBlueskyRuns:
    """The runs of one ``plan_name`` (of one session, if given), oldest first."""
    results = client.search(Eq(schema.PLAN_NAME_QUERY, plan_name))
    if session_uid is not None:
        results = results.search(Eq(schema.SESSION_UID_QUERY, session_uid))
    return results.sort((schema.START_TIME_QUERY, 1))


def dedupe_events(docs: Iterable[tuple[str, Document]]) -> Iterator[tuple[str, Document]]:
    """Drop repeated events: one per (descriptor, seq_num), the last one recorded.

    A suspender rewinds a plan to its last checkpoint and takes the points again with the same
    ``seq_num`` (and new uids), so the later event is the valid one. Event pages are unpacked.
    """
    items: list[tuple[str, Document]] = []
    for name, doc in docs:
        if name == "event_page":
            items.extend(("event", event) for event in unpack_event_page(cast(EventPage, doc)))
        else:
            items.append((name, doc))
    events = {i: cast(Event, doc) for i, (name, doc) in enumerate(items) if name == "event"}
    last = {(event["descriptor"], event["seq_num"]): i for i, event in events.items()}
    for i, (name, doc) in enumerate(items):
        if i not in events or last[(events[i]["descriptor"], events[i]["seq_num"])] == i:
            yield name, doc


@dataclass(frozen=True)
class FeedResult:
    """What :func:`feed_documents` delivered, by document name, and what it fixed on the way.

    ``duplicates_dropped``: repeated events removed; ``frames_repaired``: events whose array
    data were re-paired with the right frames (a stream with retaken points).
    """

    delivered: dict[str, int]
    duplicates_dropped: int
    frames_repaired: int


def _last_row_per_seq(seq_num: Iterable[int]) -> dict[int, int]:
    """seq_num -> index of its last row (a suspender's retake supersedes the first take)."""
    return {int(s): i for i, s in enumerate(seq_num)}


def _retaken_frames(run: Container, stream: str) -> dict[str, dict[int, Any]]:
    """field -> seq_num -> frame (as a list) for a stream whose table repeats a seq_num.

    Empty when nothing repeats. Needed because the json-seq exporter (bluesky-tiled-plugins
    2.0.12) keeps the last table row per seq_num but pairs array frames with events in storage
    order, so after a retake the frames land on the wrong events.
    """
    parts = run[stream].base
    if "internal" not in parts:
        return {}
    seq_num = parts["internal"].read(columns=["seq_num"])["seq_num"].to_numpy()
    last = _last_row_per_seq(seq_num)
    if len(last) == len(seq_num):
        return {}
    data_keys = parts.metadata.get("data_keys", {})
    frames: dict[str, dict[int, Any]] = {}
    for key in parts:
        if key == "internal" or data_keys.get(key, {}).get("external"):
            continue
        values = parts[key].read()
        if len(values) == len(seq_num):
            frames[key] = {s: values[i].tolist() for s, i in last.items()}
    return frames


def feed_documents(run: Container, callback: DocumentCallback) -> FeedResult:
    """Send a stored run's documents (``run.documents()``) to ``callback(name, doc)`` in order.

    Events come back once per (stream, seq_num), the last take when a suspender made the plan
    take a point again, with that take's array data. Event uids are not the original ones: the
    SQL layout does not keep them (the exporter makes ``event-<descriptor>-<seq_num>``).
    """
    docs: list[tuple[str, Document]] = list(run.documents())
    descriptors = [cast(EventDescriptor, doc) for name, doc in docs if name == "descriptor"]
    stream_of = {d["uid"]: d.get("name", schema.PRIMARY) for d in descriptors}
    retaken = {stream: _retaken_frames(run, stream) for stream in set(stream_of.values())}
    repaired = 0
    n_events = 0
    fixed: list[tuple[str, Document]] = []
    for name, doc in docs:
        if name == "event":
            n_events += 1
            event = cast(Event, doc)
            frames = retaken[stream_of[event["descriptor"]]]
            if frames:
                data = {**event["data"], **{k: v[event["seq_num"]] for k, v in frames.items()}}
                doc = Event(**{**event, "data": data})
                repaired += 1
        fixed.append((name, doc))
    delivered: dict[str, int] = {}
    for name, doc in dedupe_events(fixed):
        callback(name, doc)
        delivered[name] = delivered.get(name, 0) + 1
    return FeedResult(delivered, n_events - delivered.get("event", 0), repaired)


def read_stream_table(run: Container, stream: str) -> pd.DataFrame | None:
    """The scalar columns of ``stream``, one row per ``seq_num`` (the last take, as
    :func:`dedupe_events` keeps it), indexed and ordered by ``seq_num``; None when the run
    has no such table. Reads the table alone, never the array nodes."""
    if stream not in run:
        return None
    parts = run[stream].base
    if "internal" not in parts:
        return None
    table = parts["internal"].read()
    return table.drop_duplicates("seq_num", keep="last").set_index("seq_num").sort_index()


@dataclass(frozen=True)
class ImageStack:
    """A stream's 2-D images, one per event, de-duplicated and ordered by ``seq_num``."""

    images: np.ndarray
    seq_num: np.ndarray
    time: np.ndarray
    units: str | None
    data_key: dict[str, Any]


def read_array_stream(run: Container, field: str, stream: str = schema.PRIMARY) -> ImageStack:
    """Read the arrays of ``field`` in ``stream``, one per event, de-duplicated by ``seq_num``.

    Reads the array node directly (a square image through the stream's xarray view gets the
    same dim name twice) and pairs its rows with the stream's table rows, which TiledWriter
    appends together. A repeated ``seq_num`` (a suspender's retake) keeps the last array.
    A run without the stream or the field (a run cut off before its first event) gives an
    empty stack.
    """
    parts = run[stream].base if stream in run else None
    if parts is None or field not in parts or "internal" not in parts:
        data_key = {} if parts is None else dict(
            parts.metadata.get("data_keys", {}).get(field, {}))
        shape = tuple(int(n) for n in data_key.get("shape") or (0, 0))
        return ImageStack(images=np.zeros((0, *shape), dtype=np.float32),
                          seq_num=np.zeros(0, dtype=int), time=np.zeros(0),
                          units=data_key.get("units"), data_key=data_key)
    values = np.asarray(parts[field].read())
    table = parts["internal"].read(columns=["seq_num", "time"])
    if len(table) != len(values):
        raise ValueError(
            f"{stream}/{field} has {len(values)} frames but the stream table has {len(table)} "
            "rows; cannot pair frames with events"
        )
    seq_num = table["seq_num"].to_numpy()
    last = _last_row_per_seq(seq_num)
    order = np.array([last[s] for s in sorted(last)], dtype=int)
    data_key = dict(parts.metadata.get("data_keys", {}).get(field, {}))
    return ImageStack(
        images=values[order],
        seq_num=seq_num[order],
        time=table["time"].to_numpy()[order],
        units=data_key.get("units"),
        data_key=data_key,
    )


def read_image_stream(run: Container, field: str = schema.SCAN_IMAGE,
                      stream: str = schema.PRIMARY) -> ImageStack:
    """Read the 2-D images of ``field`` in ``stream``, one per event (see
    :func:`read_array_stream`; none from a run without images); ValueError if they are not
    images."""
    stack = read_array_stream(run, field, stream)
    if stack.images.ndim != 3:
        raise ValueError(
            f"{stream}/{field} has shape {stack.images.shape}, not (events, rows, cols)")
    return stack


class RunRecords:
    """A run's start document and its streams as typed records, wherever the run is kept.

    Subclasses say how a stream's events are found (:meth:`rows`): :class:`StoredRun` reads
    Tiled, :class:`~spm_bluesky.storage.journal_runs.JournalRun` the journal's documents.
    """

    def __init__(self, start: RunStart) -> None:
        self.start: RunStart = start
        #: The start document's keys beyond event-model's schema (the session's, the plan's).
        self.metadata: dict[str, Any] = dict(self.start)

    @property
    def uid(self) -> str:
        """The run's uid."""
        return self.start["uid"]

    @property
    def plan_name(self) -> str:
        """The run type ('' when the start document names none)."""
        return str(self.metadata.get(schema.PLAN_NAME, ""))

    @property
    def autonomy(self) -> dict[str, Any] | None:
        """The session's configuration, when the run belongs to an autonomous session."""
        config = self.metadata.get(schema.AUTONOMY)
        return None if config is None else dict(config)

    @property
    def autonomy_run(self) -> int:
        """This run's number in its session (0 for a run outside one)."""
        return int(self.metadata.get(schema.AUTONOMY_RUN, 0))

    @property
    def model_ids(self) -> dict[str, str]:
        """The models the run was made with (``assessor``, ``policy``)."""
        return dict(self.metadata.get(schema.MODEL_IDS, {}))

    @property
    def time(self) -> float:
        """The start document's time (s since the epoch)."""
        return float(self.start["time"])

    def rows(self, stream: str) -> list[tuple[int, EventData]]:
        """(seq_num, data) of every event of ``stream``, the last take of each, in order."""
        raise NotImplementedError

    def _records(self, stream: str, make: Callable[[str, int, EventData], R | None]) -> list[R]:
        made = (make(self.uid, seq, data) for seq, data in self.rows(stream))
        return [record for record in made if record is not None]

    def frames(self) -> list[FrameRecord]:
        """The scanned frames of an image run (``primary``)."""
        return self._records(schema.PRIMARY, FrameRecord.from_data)

    def statuses(self) -> list[StatusRecord]:
        """The instrument status of a coarse run (``primary``)."""
        return self._records(schema.PRIMARY, StatusRecord.from_data)

    def assessments(self) -> list[AssessmentRecord]:
        """The assessor's judgement of each frame (``assessment``)."""
        return self._records(schema.ASSESSMENT, AssessmentRecord.from_data)

    def decisions(self) -> list[DecisionRecord]:
        """The loop's verdict on each frame of a scan run (``decision``)."""
        return self._records(schema.DECISION, DecisionRecord.from_data)

    def faults(self) -> list[FaultRecord]:
        """The faults a suspender handled (``fault``)."""
        return self._records(schema.FAULT, FaultRecord.from_data)

    def truths(self) -> list[TruthRecord]:
        """The twin's true tip class at each frame (``truth``; empty off the twin)."""
        return self._records(schema.TRUTH, TruthRecord.from_data)

    def steps(self, arrays: bool = False) -> list[StepRecord]:
        """The conditioning steps (``action``)."""
        return [StepRecord.from_data(self.uid, seq, data)
                for seq, data in self.rows(schema.ACTION)]


class StoredRun(RunRecords):
    """One run stored in Tiled: its start document and its streams as typed records.

    Each stream is read from its table (scalars only, the last take of every ``seq_num``)
    the first time it is asked for. An absent stream gives no records.
    """

    def __init__(self, run: Container) -> None:
        super().__init__(run.metadata["start"])
        self.container = run
        self._rows: dict[str, list[tuple[int, EventData]]] = {}

    def rows(self, stream: str) -> list[tuple[int, EventData]]:
        """(seq_num, data) of every event of ``stream``, in order (table columns only)."""
        if stream not in self._rows:
            self._rows[stream] = self._read_rows(stream)
        return self._rows[stream]

    def _read_rows(self, stream: str) -> list[tuple[int, EventData]]:
        table = read_stream_table(self.container, stream)
        rows: list[tuple[int, EventData]] = [] if table is None else [
            (int(seq), data) for seq, data in zip(
                table.index, table.to_dict("records"), strict=True)]
        return rows

    def steps(self, arrays: bool = False) -> list[StepRecord]:
        """The conditioning steps (``action``); with ``arrays`` also each step's action mask
        and policy values (one more read per array)."""
        rows = self.rows(schema.ACTION)
        if arrays and rows:
            extra = {key: self._array_rows(schema.ACTION, key)
                     for key in (schema.STEP_MASK, schema.STEP_VALUES)}
            rows = [(seq, {**data, **{key: by_seq.get(seq) for key, by_seq in extra.items()}})
                    for seq, data in rows]
        return [StepRecord.from_data(self.uid, seq, data) for seq, data in rows]

    def images(self) -> ImageStack:
        """The frames' images (``primary``), in ``seq_num`` order."""
        return read_image_stream(self.container)

    def _array_rows(self, stream: str, key: str) -> dict[int, np.ndarray]:
        if key not in self.container[stream].base:
            return {}
        stack = read_array_stream(self.container, key, stream)
        return {int(s): a for s, a in zip(stack.seq_num, stack.images, strict=True)}


class SessionReader:
    """The runs of one session, oldest first, as :class:`StoredRun` objects.

    Raises :class:`SessionNotFound` (with how to find sessions) if no run carries the uid.
    """

    def __init__(self, client: CatalogOfBlueskyRuns, session_uid: str) -> None:
        self.client = client
        self.session_uid = session_uid
        self.runs = [StoredRun(run) for run in runs_by_session(client, session_uid).values()]
        if not self.runs:
            raise SessionNotFound(
                f"no run in Tiled ({client.uri}) has session_uid {session_uid!r}. "
                "`spm-bluesky report --list` shows the newest sessions; in Python: "
                "spm_bluesky.storage.list_sessions(client)")

    def __iter__(self) -> Iterator[StoredRun]:
        return iter(self.runs)

    def __len__(self) -> int:
        return len(self.runs)

    def autonomous_runs(self) -> Iterator[StoredRun]:
        """The runs of the autonomous loop (those carrying the session's configuration)."""
        return (run for run in self.runs if run.autonomy is not None)


@dataclass(frozen=True)
class SessionSummary:
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
        uid = start.get(schema.SESSION_UID)
        if uid:
            found.setdefault(uid, []).append(start.get(schema.PLAN_NAME, ""))
    return [SessionSummary(uid, len(plans), plans[0])
            for uid, plans in list(found.items())[-limit:]]
