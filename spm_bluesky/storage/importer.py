"""Storing a run made outside the RunEngine (an imported file), whole or not at all.

:func:`store_run` writes a finished run's documents (start to stop, already validated) with
the project's TiledWriter settings (:func:`~spm_bluesky.storage.writer.make_writer`) and,
when a write fails part way, deletes what reached Tiled, so a catalog never keeps half a
run. :func:`find_imported` finds the run an earlier import stored the same bytes in (by the
sha256s its start document lists).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from event_model.documents import Document
from tiled.queries import Contains

from spm_bluesky import schema
from spm_bluesky.storage.writer import make_writer

#: Events held by the writer before it writes them: a run's events go in one request.
IMPORT_BATCH_SIZE = 1000


class StoreFailed(RuntimeError):
    """Tiled refused a run; what had reached it was deleted again (the message says why)."""


def find_imported(client: Any, sha256: str) -> str | None:
    """The uid of a stored run holding a file with this sha256; None if there is none."""
    found = client.search(Contains(schema.SOURCE_SHA256_QUERY, sha256))
    for uid in found:
        return str(uid)
    return None


def store_run(client: Any, documents: Sequence[tuple[str, Document]]) -> str:
    """Write one whole run (``start`` first, ``stop`` last) into Tiled; return its uid.

    On a failed write the run's node is deleted (with all it holds) and
    :class:`StoreFailed` is raised with the first line of the cause.
    """
    name, start = documents[0]
    if name != "start" or documents[-1][0] != "stop":
        raise ValueError("a run to store goes from its start document to its stop document")
    uid = str(start["uid"])  # type: ignore[typeddict-item]
    writer = make_writer(client, batch_size=IMPORT_BATCH_SIZE)
    try:
        for name, doc in documents:
            writer(name, doc)
    except Exception as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        try:
            if uid in client:
                client.delete_contents(uid, recursive=True, external_only=False)
        except Exception as cleanup:  # say so: the catalog may now hold a partial run
            raise StoreFailed(f"Tiled refused the run ({reason}), and deleting what was "
                              f"written failed too ({cleanup}): delete run {uid}") from exc
        raise StoreFailed(f"Tiled refused the run ({reason}); nothing of it was kept") from exc
    return uid
