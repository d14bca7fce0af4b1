"""The sessions as the console reads them from Tiled: read once, in the background, and
again only where they grow.

A session is its runs. :class:`SessionCache` keeps every run it has read (a
:class:`~spm_bluesky.storage.StoredRun` with its stream tables) and builds the session's
:class:`~spm_bluesky.report.session.SessionData` from them with the report's own reader, so
the console and the report count the same things. A run that has stopped never changes
and is never read again; a new run, or the newest one while it is open, is read when the
session's :class:`Stamp` changes (the newest run, whether it stopped, how many frames it
holds: a few small requests, checked at most every
:data:`STAMP_INTERVAL_S`).

Reading a stored session of hundreds of runs from Tiled takes many requests per run, far
longer than a page may take. So the first read of a session runs in the background,
newest runs first, several at a time; the session is served as soon as its newest runs are
read (:attr:`CachedSession.complete` is False until all are), and then in full. Listing the
sessions starts reading the newest few, so the one a person opens is usually ready.

Frames are read only for the images shown, one read per run: the run's ``primary`` image
array is sliced from the first to the last row asked for. Rendered PNGs are kept in a
bounded cache keyed by what they show.

A2's labelling may call :meth:`SessionCache.session` (the records and their index by
``(run_uid, seq_num)``) and :meth:`SessionCache.frames`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tiled.client.container import Container
from tiled.queries import Eq, Key

from spm_bluesky import schema
from spm_bluesky.report import ImageRecord, SessionData, StoredImage, YieldFigures, yield_figures
from spm_bluesky.report.reader import build_session
from spm_bluesky.storage import (
    EventData,
    SessionNotFound,
    SessionSummary,
    StoredRun,
    list_sessions,
)

logger = logging.getLogger(__name__)

#: Seconds a checked stamp is trusted before Tiled is asked again (the live view polls
#: about twice a second; several browsers share one check).
STAMP_INTERVAL_S = 0.25
#: Seconds the list of sessions is trusted.
LIST_INTERVAL_S = 2.0
#: Sessions listed (the newest, among the newest runs :func:`list_sessions` scans).
LISTED_SESSIONS = 50
#: The newest sessions read in the background once listed, so that opening one is quick.
PREFETCHED_SESSIONS = 3
#: Rendered PNGs kept (thumbnails are a few tens of kB).
PNG_CACHE_SIZE = 2000
#: Runs read from Tiled at once.
READERS = 6
#: Newest runs read before a session is first served (a run of the loop holds a page of
#: images or more); then a partial session is published every :data:`PUBLISH_EVERY_S` until
#: all its runs are read.
FIRST_RUNS = 1
PUBLISH_EVERY_S = 2.0
#: Seconds a request waits for a session's newest runs on its first read.
FIRST_READ_TIMEOUT_S = 60.0
#: Streams of one run read at once.
STREAM_READERS = 4
#: Seconds after its newest run started that a session whose runs have all stopped still
#: counts as live (the loop starts its next run at once).
LIVE_WINDOW_S = 60.0


@dataclass(frozen=True)
class Stamp:
    """What a session held in Tiled when checked; a change means: read what is new."""

    #: The newest run's number in its session (``autonomy_run``; 0 outside the loop).
    runs: int
    last_run: str
    #: The newest run's start time (s since the epoch) and whether it has stopped.
    last_time: float
    stopped: bool
    events: tuple[int, ...]

    @property
    def token(self) -> str:
        """A short string that changes with the stamp (for URLs and the live view)."""
        return f"{self.runs}-{self.last_run[:8]}-{int(self.stopped)}-" + \
            ".".join(map(str, self.events))


@dataclass
class CachedSession:
    """One session's data as read so far, its stamp, and its images by
    ``(run_uid, seq_num)``."""

    data: SessionData
    stamp: Stamp
    figures: YieldFigures
    #: Runs read so far, of how many (all of them once :attr:`complete`).
    runs_read: int
    runs_total: int
    index: dict[tuple[str, int], ImageRecord] = field(default_factory=dict)
    #: The assessor's class of each image (its ``assessment`` event's label).
    assessed: dict[tuple[str, int], str] = field(default_factory=dict)

    @classmethod
    def of(cls, session_uid: str, runs: Sequence[StoredRun], stamp: Stamp,
           runs_total: int) -> CachedSession:
        """The session of ``runs`` (read, oldest first): indexed, its yield counted."""
        data = build_session(session_uid, runs)
        index = {(r.run_uid, r.seq_num): r for r in data.images}
        assessed = {(a.run_uid, a.seq_num): a.label for run in runs
                    if run.plan_name in schema.IMAGE_PLANS for a in run.assessments()}
        return cls(data, stamp, yield_figures(data), data.runs, runs_total, index, assessed)

    def assessed_class(self, record: ImageRecord) -> str | None:
        """The class the assessor gave ``record`` (None when it was not assessed)."""
        return self.assessed.get((record.run_uid, record.seq_num)) or None

    @property
    def complete(self) -> bool:
        """True once every run of the session is read."""
        return self.runs_read >= self.runs_total

    @property
    def live(self) -> bool:
        """True while the session's newest run is open (it runs, or was cut off) or started
        less than :data:`LIVE_WINDOW_S` ago."""
        return _live(self.stamp.stopped, self.stamp.last_time)

    @property
    def imported(self) -> bool:
        """True if the session holds images of imported files."""
        return any(r.imported for r in self.data.images)

    def latest(self) -> ImageRecord | None:
        """The newest image (by instrument clock)."""
        return max(self.data.images, key=lambda r: r.clock, default=None)


@dataclass(frozen=True)
class ListedSession:
    """A session in the list: its summary, whether it is live, its first and newest run's
    start times (s since the epoch)."""

    summary: SessionSummary
    live: bool
    first_time: float
    last_time: float

    @property
    def imported(self) -> bool:
        """True if the session started by importing files."""
        return self.summary.first_plan == schema.IMPORT_FILES


class PngCache:
    """A bounded, thread-safe cache of rendered PNGs (least recently used goes first).

    A PNG asked for while it is being made is made once: the second caller waits for it.
    """

    def __init__(self, size: int = PNG_CACHE_SIZE) -> None:
        self.size = size
        self._items: OrderedDict[Hashable, bytes] = OrderedDict()
        self._making: dict[Hashable, threading.Lock] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable, make: Callable[[], bytes]) -> bytes:
        """The PNG under ``key``, made (outside the cache's lock) when not cached."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            making = self._making.setdefault(key, threading.Lock())
        with making:
            with self._lock:
                if key in self._items:
                    return self._items[key]
            png = make()
            with self._lock:
                self._items[key] = png
                self._making.pop(key, None)
                while len(self._items) > self.size:
                    self._items.popitem(last=False)
        return png


class TableRun(StoredRun):
    """A stored run whose stream tables are all read at once, each by its path (two
    requests a stream; the streams of a stopped run are named in its stop document), rather
    than stream by stream through the run's client (six). Same records as
    :class:`~spm_bluesky.storage.StoredRun`: the last take of every ``seq_num``."""

    def __init__(self, client: Any, run: Any, pool: ThreadPoolExecutor) -> None:
        super().__init__(run)
        stop = run.metadata.get("stop") or {}
        # An open run may gain a stream at any time: ask for each (all at once).
        streams = [stream for stream in (
            list(stop.get("num_events") or {}) if stop else schema.STREAMS)
            if stream in schema.STREAMS]
        self.stopped = bool(stop)
        #: The row of each frame (``seq_num``) in the ``primary`` arrays: the last take.
        self.frame_rows: dict[int, int] = {}
        self._tables: dict[str, list[tuple[int, EventData]]] = {
            stream: rows for stream, rows in zip(
                streams, pool.map(lambda stream: self._table(client, stream), streams),
                strict=True) if rows is not None}

    @property
    def undecided(self) -> bool:
        """True if a frame of this scan run has no verdict stored yet."""
        return self.plan_name == schema.AUTONOMOUS_SCAN and \
            len(self.rows(schema.DECISION)) < len(self.rows(schema.PRIMARY))

    def _table(self, client: Any, stream: str) -> list[tuple[int, EventData]] | None:
        """The stream's rows; None when the run has no such stream (yet)."""
        try:
            node = Container.__getitem__(client, f"{self.uid}/{stream}/internal")
        except KeyError:
            return None
        raw = node.read()
        if stream == schema.PRIMARY:
            self.frame_rows = {int(s): i for i, s in enumerate(raw["seq_num"])}
        table = raw.drop_duplicates("seq_num", keep="last").set_index("seq_num").sort_index()
        return [(int(seq), data) for seq, data in zip(
            table.index, table.to_dict("records"), strict=True)]

    def rows(self, stream: str) -> list[tuple[int, EventData]]:
        """(seq_num, data) of every event of ``stream``, in order (read at construction)."""
        return self._tables.get(stream, [])


@dataclass
class _Session:
    """What the cache holds of one session: the runs read, in order, and what is served."""

    uid: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    runs: dict[str, TableRun] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    served: CachedSession | None = None
    checked: float = 0.0
    first_served: threading.Event = field(default_factory=threading.Event)
    error: Exception | None = None


class SessionCache:
    """The sessions of one Tiled catalog, read once and again only where they grow.

    ``connect`` makes the catalog client on first use. Thread-safe: the app's handlers run
    in a thread pool; one session is refreshed by one thread at a time.
    """

    def __init__(self, connect: Callable[[], Any]) -> None:
        self._connect = connect
        self._client: Any = None
        self._lock = threading.Lock()
        self._sessions: dict[str, _Session] = {}
        self._listed: tuple[float, list[ListedSession]] | None = None
        self._table_runs: dict[str, TableRun] = {}
        self._frames: dict[str, Any] = {}
        self._pool = ThreadPoolExecutor(READERS, thread_name_prefix="console-read")
        self._stream_pool = ThreadPoolExecutor(STREAM_READERS,
                                               thread_name_prefix="console-stream")
        self.pngs = PngCache()
        self._painter = ThreadPoolExecutor(1, thread_name_prefix="console-warm")

    def warm(self, key: Hashable, make: Callable[[], bytes]) -> None:
        """Draw a PNG into the cache in the background (the live view's newest image, drawn
        while its page is still reading the session's state)."""
        def draw() -> None:
            try:
                self.pngs.get(key, make)
            except Exception:  # the request for it draws again and reports
                logger.debug("drawing %s ahead failed", key, exc_info=True)

        self._painter.submit(draw)

    @property
    def client(self) -> Any:
        """The catalog client (connected on first use)."""
        with self._lock:
            if self._client is None:
                self._client = self._connect()
            return self._client

    def sessions(self) -> list[ListedSession]:
        """The newest sessions, newest first (cached for :data:`LIST_INTERVAL_S`)."""
        now = time.monotonic()
        if self._listed is not None and now - self._listed[0] < LIST_INTERVAL_S:
            return self._listed[1]
        listed = []
        for summary in reversed(list_sessions(self.client, limit=LISTED_SESSIONS)):
            runs = self._runs_of(summary.uid).values()
            first, last = runs.first().metadata, runs.last().metadata
            last_time = float(last["start"]["time"])
            listed.append(ListedSession(summary, _live(last.get("stop") is not None,
                                                       last_time),
                                        float(first["start"]["time"]), last_time))
        self._listed = (now, listed)
        for newest in listed[:PREFETCHED_SESSIONS]:
            self._entry(newest.summary.uid)
        return listed

    def _runs_of(self, session_uid: str) -> Any:
        return self.client.search(Eq(schema.SESSION_UID_QUERY, session_uid)).sort(
            (schema.START_TIME_QUERY, 1))

    def session(self, session_uid: str, refresh: bool = True) -> CachedSession:
        """The session as read so far: its newest runs at least, all of them once read,
        and (with ``refresh``) whatever it gained since the last check.

        Raises :class:`~spm_bluesky.storage.SessionNotFound` if no run carries the uid.
        """
        entry = self._entry(session_uid)
        if not entry.first_served.wait(FIRST_READ_TIMEOUT_S):
            raise TimeoutError(f"reading session {session_uid} from Tiled took more than "
                               f"{FIRST_READ_TIMEOUT_S:g} s")
        if entry.error is not None:
            with self._lock:
                self._sessions.pop(session_uid, None)
            raise entry.error
        served = entry.served
        assert served is not None
        if refresh and served.complete and \
                time.monotonic() - entry.checked >= STAMP_INTERVAL_S:
            with entry.lock:
                if time.monotonic() - entry.checked >= STAMP_INTERVAL_S:
                    self._refresh(entry)
        return entry.served or served

    def _entry(self, session_uid: str) -> _Session:
        """The session's entry; a new one starts reading the session in the background."""
        with self._lock:
            entry = self._sessions.get(session_uid)
            if entry is not None:
                return entry
            entry = self._sessions[session_uid] = _Session(session_uid)
        threading.Thread(target=self._first_read, args=(entry,), daemon=True,
                         name=f"console-first-read-{session_uid[:8]}").start()
        return entry

    def _first_read(self, entry: _Session) -> None:
        """Read every run of a session, newest first, publishing as it goes."""
        try:
            with entry.lock:
                stamp = self.stamp(entry.uid)
                listing = list(self._runs_of(entry.uid).values())
                if not listing:
                    raise SessionNotFound(
                        f"no run in Tiled has session_uid {entry.uid!r}: the sessions page "
                        "lists those there are")
                entry.order = [run.metadata["start"]["uid"] for run in listing]
                published = 0.0
                for done, run in enumerate(self._pool.map(self._read, reversed(listing)), 1):
                    entry.runs[run.uid] = run
                    now = time.monotonic()
                    if done == len(listing) or (done >= min(FIRST_RUNS, len(listing)) and (
                            not entry.first_served.is_set() or
                            now - published >= PUBLISH_EVERY_S)):
                        self._publish(entry, stamp)
                        published = now
                        entry.first_served.set()
                entry.checked = time.monotonic()
        except Exception as err:  # told to every request waiting for this session
            if not isinstance(err, SessionNotFound):
                logger.exception("reading session %s failed", entry.uid)
            entry.error = err
            entry.first_served.set()

    def _publish(self, entry: _Session, stamp: Stamp) -> None:
        """Serve what is read: the newest runs read, in order (all of them once read)."""
        first_missing = max((i for i, uid in enumerate(entry.order) if uid not in entry.runs),
                            default=-1)
        read = [entry.runs[uid] for uid in entry.order[first_missing + 1:]]
        entry.served = CachedSession.of(entry.uid, read, stamp, len(entry.order))

    def _refresh(self, entry: _Session) -> None:
        """Read the runs that are new or were open when last read, if the stamp changed."""
        stamp, newest = self._newest(entry.uid)
        entry.checked = time.monotonic()
        assert entry.served is not None
        if stamp == entry.served.stamp and not entry.runs[entry.order[-1]].undecided:
            return
        open_runs = [uid for uid in entry.order if not entry.runs[uid].stopped]
        if open_runs == [stamp.last_run] == entry.order[-1:]:
            fresh = [newest]  # the one open run grew: nothing else to list
        else:
            since = entry.runs[open_runs[0] if open_runs else entry.order[-1]].time
            fresh = list(self._runs_of(entry.uid).search(
                Key(schema.START_TIME_QUERY) >= since).values())
        for run in self._pool.map(self._read, fresh):
            if run.uid not in entry.runs:
                entry.order.append(run.uid)
            entry.runs[run.uid] = run
        self._publish(entry, stamp)

    def _read(self, run: Any) -> TableRun:
        read = TableRun(self.client, run, self._stream_pool)
        with self._lock:
            self._table_runs[read.uid] = read
        return read

    def stamp(self, session_uid: str) -> Stamp:
        """What the session holds now in Tiled (see :class:`Stamp`): one request for the
        newest run, and while it is open one for its frames. (A verdict lands just after
        its frame: a session whose newest frame has none is read again at the next check
        whatever the stamp says.)"""
        return self._newest(session_uid)[0]

    def _newest(self, session_uid: str) -> tuple[Stamp, Any]:
        """The session's stamp and its newest run (None if it has none)."""
        runs = self._runs_of(session_uid)
        try:
            last = runs.values().last()
        except IndexError:  # no run (yet) carries the uid
            return Stamp(0, "", 0.0, True, ()), None
        start = last.metadata["start"]
        stopped = last.metadata.get("stop") is not None
        events: tuple[int, ...] = ()
        if not stopped:  # a stopped run holds all it ever will
            events = (self._frames_stored(start["uid"]),)
        return Stamp(int(start.get(schema.AUTONOMY_RUN, 0)), str(start["uid"]),
                     float(start["time"]), stopped, events), last

    def _frames_stored(self, run_uid: str) -> int:
        """Frames stored so far in the run (0 when it has none yet): the length of its image
        array, which its node's structure gives in one request (reading a table costs two,
        and a dataframe)."""
        try:
            array = Container.__getitem__(self.client,
                                          f"{run_uid}/{schema.PRIMARY}/{schema.SCAN_IMAGE}")
        except KeyError:
            return 0
        return int(array.shape[0])

    def frames(self, records: Sequence[ImageRecord]) -> list[StoredImage]:
        """The stored frames of ``records`` (heights in m), in the order given: one read of
        each run's image array, from the first to the last row asked for."""
        by_run: dict[str, list[ImageRecord]] = {}
        for record in records:
            by_run.setdefault(record.run_uid, []).append(record)
        found: dict[tuple[str, int], np.ndarray] = {}
        for run_uid, wanted in by_run.items():
            array, row_of = self._run_frames(run_uid, [r.seq_num for r in wanted])
            rows = [row_of[r.seq_num] for r in wanted]
            low, high = min(rows), max(rows)
            block = np.asarray(array[low:high + 1])
            for record, row in zip(wanted, rows, strict=True):
                found[(run_uid, record.seq_num)] = block[row - low]
        return [(r, found[(r.run_uid, r.seq_num)]) for r in records]

    def _run_frames(self, run_uid: str, seq_nums: Sequence[int]
                    ) -> tuple[Any, dict[int, int]]:
        """The run's image array node and the row of each ``seq_num`` (the last take of a
        retaken frame, as read with the run's tables). The node of an open run is asked
        for again each time: its shape grows with every frame."""
        with self._lock:
            run = self._table_runs.get(run_uid)
            array = self._frames.get(run_uid)
        if run is None:
            raise LookupError(f"run {run_uid} is not a run the console has read")
        missing = [s for s in seq_nums if s not in run.frame_rows]
        if missing:
            raise LookupError(f"run {run_uid} holds no frame with seq_num {missing[0]}")
        if array is None:
            array = Container.__getitem__(
                self.client, f"{run_uid}/{schema.PRIMARY}/{schema.SCAN_IMAGE}")
            if run.stopped:
                with self._lock:
                    self._frames[run_uid] = array
        return array, run.frame_rows


def _live(stopped: bool, last_time: float) -> bool:
    return not stopped or time.time() - last_time < LIVE_WINDOW_S

