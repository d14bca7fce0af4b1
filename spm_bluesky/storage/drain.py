"""The drain: fills Tiled from the journal in the background, across outages and restarts.

:class:`Drain` reads the journal (:mod:`spm_bluesky.storage.journal`) from its cursor, hands
each run's documents to a TiledWriter run writer and writes the events it has read in one
batch per stream (so an image is readable in Tiled a moment after it was journaled, and a
fast session costs few HTTP requests). It never gives up: when Tiled does not answer or
refuses a write, it drops what it was writing, waits (0.5 s, doubling to ``max_backoff``),
connects again and starts over from the cursor, for as long as the outage lasts. It says
so once, as soon as a pass fails or has waited ``stall_warning`` seconds on Tiled (whose
client retries for up to about 45 s by itself: :mod:`spm_bluesky.storage.outage`).

The cursor (``cursor.json``) is the start of the oldest run not yet wholly in Tiled (or the
end of what was read, when every run read is complete). Starting over from it is
idempotent: Tiled does not keep event uids, so a run is matched by its uid, and a run that
Tiled holds with its stop document is skipped, while a run Tiled holds only in part (an
outage or a kill mid-run) is deleted and sent again whole from the journal. No event is
stored twice and none is lost.

In the embedded default the drain is a thread of the session's process
(:func:`start_drain`); after a kill, the next process that opens the journal drains what the
last one journaled.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import httpx
from bluesky_tiled_plugins.writing.tiled_writer import RunNormalizer, _RunWriter
from tiled.client.container import Container

from spm_bluesky.storage.journal import (
    Position,
    RecordKind,
    read_cursor,
    read_records,
    write_cursor,
)
from spm_bluesky.storage.outage import STALL_S, OutageReport
from spm_bluesky.storage.writer import WRITER_MAX_ARRAY_SIZE

logger = logging.getLogger(__name__)

#: Journal records read before the events read so far are written to Tiled.
DRAIN_BATCH = 512
#: Seconds between looks at the journal when everything is stored.
DRAIN_POLL = 0.05
#: Longest wait between tries while Tiled is down (s).
MAX_BACKOFF = 10.0


class _QuietOutage(logging.Filter):
    """Drops TiledWriter's tracebacks for a Tiled that does not answer: the drain reports an
    outage once, in one line, and sends the run again later."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, httpx.TransportError)


_WRITER_LOGGER = "bluesky_tiled_plugins.writing.tiled_writer"
_QUIET = _QuietOutage()


def quiet_outages() -> None:
    """Keep TiledWriter's tracebacks for an unreachable Tiled out of the log (idempotent)."""
    writer_logger = logging.getLogger(_WRITER_LOGGER)
    if _QUIET not in writer_logger.filters:
        writer_logger.addFilter(_QUIET)


class _RunFeed:
    """One run on its way into Tiled: TiledWriter's normalizer and run writer."""

    def __init__(self, client: Container, start: Position) -> None:
        self.start = start
        # The run writer holds events until flush(): its own batch size never fires.
        self.writer = _RunWriter(client, batch_size=1 << 30,
                                 max_array_size=WRITER_MAX_ARRAY_SIZE)
        self.normalizer = RunNormalizer()
        self.normalizer.subscribe(self.writer)

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        self.normalizer(name, doc)

    def flush(self) -> None:
        """Write the events held, one append per stream (as the writer's stop does)."""
        writer = self.writer
        for stream, cache in writer._internal_data_cache.items():
            if cache:
                writer._write_internal_data(cache, desc_node=writer._desc_nodes[stream])
                cache.clear()


@dataclass
class DrainStats:
    """What a drain has done so far (read from any thread)."""

    runs_stored: int = 0
    runs_skipped: int = 0
    runs_resent: int = 0
    documents: int = 0
    outages: int = 0
    last_error: str = ""
    acknowledged: Position = field(default_factory=lambda: Position(0, 0))


class Fed(StrEnum):
    """What became of one document handed to :meth:`RunFeeds.feed`."""

    #: Part of a run being written; Tiled holds it once its run is stored.
    OPEN = "open"
    #: The run's stop document: Tiled now holds the run whole.
    STORED = "stored"
    #: A document of a run Tiled already holds whole: nothing was written.
    SKIPPED = "skipped"
    #: A document of a run whose start was not seen: dropped.
    ORPHAN = "orphan"


class RunFeeds:
    """The runs on their way into Tiled: each document goes to its run's writer.

    A run Tiled holds with its stop document is skipped; a run it holds in part is deleted
    and written again whole (see the module doc). Shared by the journal's :class:`Drain`
    and the bus consumer (:mod:`spm_bluesky.storage.bus_consumer`). ``connect`` makes a new
    Tiled client; after any failure call :meth:`reset` and start over from the oldest
    ``start`` token of :meth:`opened`.
    """

    def __init__(self, connect: Callable[[], Container], stats: DrainStats) -> None:
        self._connect = connect
        self.stats = stats
        self._client: Container | None = None
        self._feeds: dict[str, _RunFeed] = {}
        self._skipped: set[str] = set()
        self._run_of_descriptor: dict[str, str] = {}

    def _client_now(self) -> Container:
        if self._client is None:
            self._client = self._connect().include_data_sources()
        return self._client

    def _begin(self, uid: str, start: Any) -> None:
        client = self._client_now()
        if uid in client:
            stored = client[uid]
            if "stop" in stored.metadata:
                self._skipped.add(uid)
                self._feeds.pop(uid, None)
                self.stats.runs_skipped += 1
                return
            stored.delete(recursive=True, external_only=False)
            self.stats.runs_resent += 1
        self._feeds[uid] = _RunFeed(client, start)

    def run_of(self, name: str, doc: dict[str, Any]) -> str:
        """The uid of the run ``doc`` belongs to ('' if its descriptor was not seen)."""
        if name == "start":
            return str(doc["uid"])
        if name == "descriptor":
            self._run_of_descriptor[doc["uid"]] = doc["run_start"]
            return str(doc["run_start"])
        if name in ("event", "event_page"):
            return self._run_of_descriptor.get(doc["descriptor"], "")
        return str(doc.get("run_start", ""))

    def feed(self, name: str, doc: dict[str, Any], start: Any = None) -> tuple[str, Fed]:
        """Hand one document to its run's writer; its run uid and what became of it.

        ``start`` is kept with a run begun by this (start) document (a journal position,
        a delivery tag). Raises whatever Tiled raised.
        """
        uid = self.run_of(name, doc)
        if name == "start":
            self._begin(uid, start)
        if uid in self._skipped:
            if name == "stop":
                self._skipped.discard(uid)
            return uid, Fed.SKIPPED
        feed = self._feeds.get(uid)
        if feed is None:
            logger.warning("a %s document of run %r whose start was not read; skipped",
                           name, uid)
            return uid, Fed.ORPHAN
        feed(name, doc)
        self.stats.documents += 1
        if name == "stop":
            del self._feeds[uid]
            self.stats.runs_stored += 1
            return uid, Fed.STORED
        return uid, Fed.OPEN

    def flush(self) -> None:
        """Write the events held by every open run, one append per stream."""
        for feed in self._feeds.values():
            feed.flush()

    def opened(self) -> list[Any]:
        """The ``start`` tokens of the runs being written (not yet whole in Tiled)."""
        return [feed.start for feed in self._feeds.values()]

    def reset(self) -> None:
        """Forget what was being written and the client (after a failure)."""
        self._client = None
        self._feeds.clear()
        self._skipped.clear()
        self._run_of_descriptor.clear()


class Drain:
    """Fills Tiled from the journal in ``directory``; see the module doc.

    ``connect`` makes a new Tiled client (called again after every failure). Run it in a
    thread with :meth:`start`, or call :meth:`drain_once` to send what is journaled now.
    """

    def __init__(self, directory: Path | str, connect: Callable[[], Container], *,
                 batch: int = DRAIN_BATCH, poll: float = DRAIN_POLL,
                 max_backoff: float = MAX_BACKOFF, stall_warning: float = STALL_S) -> None:
        self.directory = Path(directory)
        self.batch, self.poll, self.max_backoff = batch, poll, max_backoff
        self.stats = DrainStats()
        self._runs = RunFeeds(connect, self.stats)
        self._cursor = read_cursor(self.directory)
        self._read = self._cursor
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._thread: threading.Thread | None = None
        self._watch: threading.Thread | None = None
        self._report = OutageReport(
            logger, "Tiled does not take documents (%s); they stay in the journal and are "
            "sent when it answers", "Tiled answers again; sending the journal", self.stats,
            stall_warning)

    # -- one pass ---------------------------------------------------------------------------

    def _acknowledge(self) -> None:
        opened = self._runs.opened()
        cursor = min(opened) if opened else self._read
        if cursor != self._cursor:
            write_cursor(self.directory, cursor)
            self._cursor = cursor
        self.stats.acknowledged = cursor

    def drain_once(self) -> bool:
        """Send up to ``batch`` records and write what was read; True if any was read.

        Raises whatever Tiled raised; then :meth:`reset` before trying again.
        """
        count = 0
        for record in read_records(self.directory, self._read):
            self._read = record.end
            if record.kind is RecordKind.DOCUMENT:
                self._runs.feed(record.name, record.body, record.start)
            count += 1
            if count >= self.batch:
                break
        self._runs.flush()
        self._acknowledge()
        return count > 0

    def reset(self) -> None:
        """Forget what was being written; the next pass starts over from the cursor."""
        self._runs.reset()
        self._read = self._cursor

    def pending(self) -> bool:
        """True while the journal holds records Tiled has not acknowledged."""
        return next(iter(read_records(self.directory, self._cursor)), None) is not None

    # -- the thread -------------------------------------------------------------------------

    def _loop(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                with self._report.waiting():
                    progressed = self.drain_once()
            except Exception as err:  # Tiled down, refusing, timing out: try again later
                self._report.failed(f"{type(err).__name__}: {err}")
                self.stats.last_error = f"{type(err).__name__}: {err}"
                self._idle.clear()
                self.reset()
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff)
                continue
            backoff = 0.5
            if progressed:
                self._idle.clear()
            else:
                self._idle.set()
                self._stop.wait(self.poll)

    def start(self) -> Drain:
        """Run the drain in a daemon thread; returns self."""
        quiet_outages()
        self._thread = threading.Thread(target=self._loop, name="journal-drain", daemon=True)
        self._thread.start()
        self._watch = self._report.watch(self._stop, "journal-drain-watch")
        return self

    def wait_stored(self, timeout: float | None = None) -> bool:
        """Wait until everything journaled so far is in Tiled; False after ``timeout`` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._idle.clear()
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            if self._idle.wait(remaining) and not self.pending():
                return True

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread (what is not stored stays in the journal for the next drain)."""
        self._stop.set()
        for thread in (self._thread, self._watch):
            if thread is not None:
                thread.join(timeout)


def start_drain(directory: Path | str, connect: Callable[[], Container], **options: Any
                ) -> Drain:
    """A :class:`Drain` of the journal in ``directory``, running in a thread."""
    return Drain(directory, connect, **options).start()
