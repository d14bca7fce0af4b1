"""The durable document path of a session: the journal in front, the drain behind it.

:func:`durable_path` opens the data directory's journal (closing runs an earlier process
left open), starts the drain thread, and gives a :class:`DurablePath`: subscribe it to the
RunEngine (each document is fsynced to the journal before the RunEngine moves on) and hand
its :meth:`~DurablePath.mark` to the plans for safety records. On leaving, it waits for Tiled
to hold everything journaled for as long as the drain makes progress (a long outage's backlog
is sent whole, with a progress line every few seconds); once nothing went into Tiled for
``wait_s`` seconds it gives up, and what Tiled has not taken stays in the journal for the
next session on this data directory. Segments Tiled holds
are deleted (:meth:`~spm_bluesky.storage.journal.Journal.prune`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from event_model.documents import Document
from tiled.client.container import Container

from spm_bluesky.storage.drain import Drain
from spm_bluesky.storage.journal import Journal, journal_dir

logger = logging.getLogger(__name__)

#: How long leaving a durable path waits without any document going into Tiled (s).
STORE_WAIT_S = 120.0
#: How often leaving a durable path reports the backlog it is still sending (s).
PROGRESS_EVERY_S = 10.0


@dataclass(eq=False)  # hashable: the RunEngine keeps its subscribers in a set
class DurablePath:
    """A journal and the drain that empties it into Tiled."""

    journal: Journal
    drain: Drain

    def __call__(self, name: str, doc: Document) -> None:
        self.journal(name, doc)

    def mark(self, name: str, data: Mapping[str, Any]) -> None:
        """Make a safety record durable before the instrument acts again."""
        self.journal.mark(name, data)

    def wait_stored(self, timeout: float | None = STORE_WAIT_S) -> bool:
        """Wait until Tiled holds everything journaled; False after ``timeout`` seconds."""
        return self.drain.wait_stored(timeout)

    def settle(self, stall_s: float = STORE_WAIT_S,
               report_every: float = PROGRESS_EVERY_S) -> bool:
        """Wait until Tiled holds everything journaled, as long as documents keep going in;
        False once none went in for ``stall_s`` seconds. Logs the progress meanwhile."""
        sent, progressed_at = self.drain.stats.documents, time.monotonic()
        while not self.wait_stored(min(report_every, stall_s)):
            now = time.monotonic()
            if self.drain.stats.documents != sent:
                sent, progressed_at = self.drain.stats.documents, now
                logger.warning("storing the journal into Tiled: %d documents sent so far", sent)
            elif now - progressed_at >= stall_s:
                return False
        return True


@contextlib.contextmanager
def durable_path(data_dir: Path | str, connect: Callable[[], Container], *,
                 wait_s: float = STORE_WAIT_S, sync: bool = True,
                 **drain_options: Any) -> Iterator[DurablePath]:
    """The journal of ``data_dir`` and its drain into the Tiled that ``connect`` reaches."""
    directory = journal_dir(data_dir)
    journal = Journal(directory, sync=sync, prune=True)  # the drain's cursor: Tiled holds it
    drain = Drain(directory, connect, **drain_options).start()
    path = DurablePath(journal, drain)
    try:
        yield path
    finally:
        try:
            if not path.settle(wait_s):
                logger.warning("Tiled took no journaled document for %g s; the rest stays in "
                               "%s for the next session", wait_s, directory)
        finally:
            drain.stop()
            journal.close()
