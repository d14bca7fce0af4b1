"""Writing runs into Tiled: the TiledWriter subscription and a writer that keeps a backup.

``make_writer`` is the one place TiledWriter is configured (batch size, arrays as array
nodes, the event check of :class:`EnvelopeCheckingNormalizer`); ``BackedUpTiledWriter``
sends a run to a JSON-lines file when Tiled refuses it, and ``load_backup`` reads that file
back.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
from bluesky_tiled_plugins import TiledWriter
from bluesky_tiled_plugins.writing.tiled_writer import RunNormalizer
from event_model import DocumentNames, RunRouter, schema_validators
from event_model.documents import Document, RunStart
from tiled.client.container import Container

logger = logging.getLogger(__name__)

#: Events per TiledWriter write. 1 puts every event in Tiled before the RunEngine moves on, so
#: a crash of the acquiring process loses at most the event in flight (the library default,
#: 10000, holds a whole run in memory until its stop document). Cost: docs/reference/storage.md.
WRITER_BATCH_SIZE = 1
#: Largest internal array kept in a stream's SQL table. TiledWriter's default (16) sends
#: short 1-D arrays (an action mask, one Q-value per action) to SQL as list columns, which
#: Tiled's SQL storage refuses (HTTP 500, "Unsupported PyArrow type: list<item: int64>");
#: 0 writes every array as its own array node instead.
WRITER_MAX_ARRAY_SIZE = 0

#: A document subscriber: ``callback(name, doc)``, as the RunEngine calls it.
DocumentCallback = Callable[[str, Document], Any]


class EnvelopeCheckingNormalizer(RunNormalizer):
    """TiledWriter's normalizer, checking each event against its schema without its values.

    The event schema accepts any object as ``data`` and ``timestamps``, yet jsonschema walks
    every value to settle ``unevaluatedProperties``, and formats each numpy array it meets
    into an error message it then drops: with bluesky-tiled-plugins 2.0 and jsonschema 4,
    about 8 ms of CPU per image event on a 2-core VM, most of what writing a frame costs.
    Checking the event with those two mappings emptied gives the same verdict (any mapping
    passes there, anything else is checked as it is) at a fraction of the cost.
    """

    def emit(self, name: str, doc: Any) -> None:
        if (name == DocumentNames.event and isinstance(doc.get("data"), dict)
                and isinstance(doc.get("timestamps"), dict)):
            schema_validators[DocumentNames.event].validate(
                {**doc, "data": {}, "timestamps": {}})
            self.dispatcher.process(name, doc)
            return
        super().emit(name, doc)


def _tiled_writer(client: Container, batch_size: int) -> TiledWriter:
    return TiledWriter(client, batch_size=batch_size, max_array_size=WRITER_MAX_ARRAY_SIZE,
                       normalizer=EnvelopeCheckingNormalizer)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class _RunWithBackup:
    """One run's writer; if a write to Tiled fails, the whole run goes to a JSON-lines file.

    Like TiledWriter's own ``backup_directory``, but numpy arrays in events survive: the
    library's backup writer (bluesky-tiled-plugins 2.0.12) cannot encode them and leaves a
    truncated line. The run's documents are kept in memory until its stop document.
    """

    def __init__(self, writer: DocumentCallback, path: Path) -> None:
        self._writer = writer
        self._path = path
        self._pending: list[tuple[str, Document]] = []
        self._failed = False

    def __call__(self, name: str, doc: Document) -> None:
        if not self._failed:
            self._pending.append((name, doc))
            try:
                self._writer(name, doc)
                return
            except Exception:
                logger.exception("Writing to Tiled failed; this run goes to %s", self._path)
                self._failed = True
        docs, self._pending = (self._pending or [(name, doc)]), []
        with open(self._path, "a") as f:
            for n, d in docs:
                f.write(json.dumps({"name": n, "doc": d}, default=_json_default) + "\n")


class BackedUpTiledWriter:
    """A TiledWriter per run that falls back to ``<backup_directory>/<run uid>.jsonl``.

    A failed write (Tiled down, a conflict) is logged and does not abort the plan; the run's
    documents, from its start, are in the file for ``load_backup``.
    """

    def __init__(self, client: Container, *, batch_size: int, backup_directory: Path) -> None:
        self._client = client.include_data_sources()  # what TiledWriter asks for: fetch once
        self._batch_size = batch_size
        self.backup_directory = Path(backup_directory)
        self.backup_directory.mkdir(parents=True, exist_ok=True)
        self._router = RunRouter([self._factory])

    def _factory(self, name: str, start: RunStart) -> tuple[list[DocumentCallback], list[Any]]:
        writer = _tiled_writer(self._client, self._batch_size)
        path = self.backup_directory / f"{start['uid']}.jsonl"
        return [_RunWithBackup(writer, path)], []

    def __call__(self, name: str, doc: Document) -> None:
        # event-model's RunRouter is typed for plain dicts; a document TypedDict is one.
        self._router(name, cast("dict[str, Any]", doc))


def load_backup(path: Path | str) -> Iterator[tuple[str, Document]]:
    """The (name, doc) pairs of a run written by ``BackedUpTiledWriter``.

    Arrays come back as nested lists and events as ``event_page`` documents (what the run
    router hands on). To re-ingest, delete the partial run from Tiled and feed these to
    ``make_writer(client)``.
    """
    with open(path) as f:
        for line in f:
            item = json.loads(line)
            yield item["name"], item["doc"]


def make_writer(
    client: Container,
    *,
    batch_size: int = WRITER_BATCH_SIZE,
    backup_directory: Path | str | None = None,
) -> DocumentCallback:
    """A document callback that writes runs into Tiled.

    ``batch_size`` events are buffered before each write (see ``WRITER_BATCH_SIZE``). Without
    a ``backup_directory`` it is a plain TiledWriter, and a failed write raises (the RunEngine
    then aborts the plan); with one, see ``BackedUpTiledWriter``.
    """
    if backup_directory is None:
        return _tiled_writer(client, batch_size)
    return BackedUpTiledWriter(
        client, batch_size=batch_size, backup_directory=Path(backup_directory)
    )


def subscribe_writer(
    RE: Any,
    client: Container,
    *,
    batch_size: int = WRITER_BATCH_SIZE,
    backup_directory: Path | str | None = None,
) -> int:
    """Subscribe a Tiled writer (see ``make_writer``) to a RunEngine; return the token."""
    writer = make_writer(client, batch_size=batch_size, backup_directory=backup_directory)
    return RE.subscribe(writer)
