"""The Tiled writer of an autonomous session: one batched write per stream per run.

``storage.make_writer``'s default (one HTTP write per event, about 100 ms) would cap a
session near 3 images a second; a 72-hour session needs over 10. A session's runs are
small (``run_images`` images, docs/reference/data-model.md), so the writer holds a run's events and
writes them when the run stops (and every ``batch_size`` events of a stream): a crash of
the Python process loses at most the run in flight. Arrays of any size go to array nodes
(``storage.WRITER_MAX_ARRAY_SIZE``), which a batch of ``condition_tip``'s action masks needs.

``spm-bluesky run`` and the demo do not use it: they journal every document and drain the
journal into Tiled in the background (:mod:`spm_bluesky.storage.durable`), so a Tiled outage
or a kill loses nothing. This writer is for scripts and tests that write to Tiled directly.
"""

from __future__ import annotations

from tiled.client.container import Container

from spm_bluesky.storage import DocumentCallback, make_writer

#: Events per stream held before a write; the stop document writes the rest.
SESSION_BATCH_SIZE = 128


def session_writer(client: Container, batch_size: int = SESSION_BATCH_SIZE) -> DocumentCallback:
    """A TiledWriter for the runs of an autonomous session (subscribe it to the RunEngine)."""
    return make_writer(client, batch_size=batch_size)
