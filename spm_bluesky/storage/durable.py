"""The durable document path of a session: the journal in front, the drain behind it.

:func:`durable_path` opens the data directory's journal (closing runs an earlier process
left open), starts the drain thread, and gives a :class:`DurablePath`: subscribe it to the
RunEngine (each document is fsynced to the journal before the RunEngine moves on) and hand
its :meth:`~DurablePath.mark` to the plans for safety records. On leaving, it waits (up to
``wait_s``) for Tiled to hold everything journaled; what Tiled has not taken by then stays
in the journal, and the next session on this data directory sends it. Segments Tiled holds
are deleted (:meth:`~spm_bluesky.storage.journal.Journal.prune`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from event_model.documents import Document
from tiled.client.container import Container

from spm_bluesky.storage.drain import Drain
from spm_bluesky.storage.journal import Journal, journal_dir

logger = logging.getLogger(__name__)

#: How long leaving a durable path waits for Tiled to hold everything journaled (s).
STORE_WAIT_S = 120.0


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
            if not path.wait_stored(wait_s):
                logger.warning("Tiled did not take every journaled document within %g s; "
                               "the rest stays in %s for the next session", wait_s, directory)
        finally:
            drain.stop()
            journal.close()
