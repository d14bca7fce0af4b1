"""The session's side of facility mode: every document journaled, then confirmed by the broker.

:func:`bus_path` gives a :class:`BusPath`, a RunEngine subscriber that, for each document,

1. appends it to the local journal and fsyncs it (as in the embedded default: resume and
   the safety records never depend on the broker or Tiled), then
2. publishes it to the exchange (:data:`~spm_bluesky.storage.bus.EXCHANGE` unless another
   is given) with persistent delivery and
   waits for the broker's confirm, so the RunEngine moves on only once the broker holds it.

No drain thread runs: Tiled is filled by the consumer process
(:mod:`~spm_bluesky.storage.bus_consumer`), the one writer into Tiled. The journal's cursor
here says how far the broker has confirmed (the start of the oldest run not yet confirmed
whole), written at each stop document; opening the path first publishes what the journal
holds past the cursor (a kill between the journal and the confirm, and the aborting stops the
journal writes for runs a killed process left open). A run published twice that way is
stored once: the consumer sends a partly stored run again whole and skips a whole one.

When the broker stops answering, publishing waits and retries (0.5 s doubling to 10 s) for as
long as it takes; the document is already in the journal meanwhile.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pika
import pika.exceptions
from event_model.documents import Document

from spm_bluesky import schema
from spm_bluesky.storage.bus import (
    EXCHANGE,
    BusAddress,
    BusError,
    connect,
    declare,
    encode_message,
    properties,
    routing_key,
)
from spm_bluesky.storage.journal import (
    Journal,
    Position,
    RecordKind,
    journal_dir,
    read_cursor,
    read_records,
    write_cursor,
)

logger = logging.getLogger(__name__)

#: Longest wait between tries while the broker does not answer (s).
MAX_BACKOFF = 10.0


class Publisher:
    """One confirmed channel to the broker; :meth:`publish` returns once the broker has the
    message, reconnecting for as long as the broker is away (BusError only at the start)."""

    def __init__(self, address: BusAddress, exchange: str = EXCHANGE,
                 max_backoff: float = MAX_BACKOFF) -> None:
        self.address, self.exchange = address, exchange
        self.max_backoff = max_backoff
        self.published = 0
        self.retries = 0
        self._connection: pika.BlockingConnection | None = None
        self._channel: Any = None
        self._open()  # BusError: the caller says so in one line, before anything moves

    def _open(self) -> None:
        self._connection = connect(self.address)
        channel = self._connection.channel()
        declare(channel, self.exchange)
        channel.confirm_delivery()
        self._channel = channel

    def _drop(self) -> None:
        if self._connection is not None and self._connection.is_open:
            with contextlib.suppress(Exception):
                self._connection.close()
        self._connection = self._channel = None

    def publish(self, key: str, body: bytes, props: pika.BasicProperties) -> None:
        """Publish and wait for the broker's confirm; retry through outages."""
        backoff, failing = 0.5, False
        while True:
            try:
                if self._channel is None:
                    self._open()
                self._channel.basic_publish(self.exchange, key, body, props, mandatory=True)
                self.published += 1
                if failing:
                    logger.warning("the broker at %s takes documents again", self.address.url)
                return
            except (pika.exceptions.AMQPError, BusError) as err:
                if not failing:
                    logger.warning("the broker at %s does not take documents (%s); the session "
                                   "waits, its documents are in the journal", self.address.url,
                                   type(err).__name__)
                failing = True
                self.retries += 1
                self._drop()
                time.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)

    def close(self) -> None:
        """Hang up (idempotent)."""
        self._drop()


@dataclass
class _Runs:
    """Which session and run each document belongs to, and where open runs start."""

    session_of: dict[str, str] = field(default_factory=dict)
    run_of_descriptor: dict[str, str] = field(default_factory=dict)
    opened: dict[str, Position] = field(default_factory=dict)

    def run_of(self, name: str, doc: Mapping[str, Any], at: Position) -> str:
        if name == "start":
            uid = str(doc["uid"])
            self.session_of[uid] = str(doc.get(schema.SESSION_UID) or "")
            self.opened[uid] = at
            return uid
        if name == "descriptor":
            self.run_of_descriptor[doc["uid"]] = doc["run_start"]
            return str(doc["run_start"])
        if name in ("event", "event_page"):
            return self.run_of_descriptor.get(doc["descriptor"], "")
        return str(doc.get("run_start", ""))

    def closed(self, uid: str) -> None:
        self.opened.pop(uid, None)
        self.session_of.pop(uid, None)
        self.run_of_descriptor = {d: r for d, r in self.run_of_descriptor.items() if r != uid}


class BusPath:
    """The journal and the broker, as one RunEngine subscriber; see the module doc."""

    def __init__(self, journal: Journal, publisher: Publisher) -> None:
        self.journal = journal
        self.publisher = publisher
        self._runs = _Runs()
        self._cursor = read_cursor(journal.directory)

    def _publish(self, name: str, doc: Mapping[str, Any], at: Position) -> None:
        run = self._runs.run_of(name, doc, at)
        session = self._runs.session_of.get(run)
        self.publisher.publish(routing_key(session, run, name), encode_message(name, doc),
                               properties(name, doc, session, run))
        if name == "stop":
            self._runs.closed(run)
            self._advance()

    def _advance(self) -> None:
        """Record how far the broker has confirmed: the oldest open run's start, else all."""
        opened = self._runs.opened.values()
        cursor = min(opened) if opened else self.journal.position
        if cursor != self._cursor:
            write_cursor(self.journal.directory, cursor)
            self._cursor = cursor

    def catch_up(self) -> int:
        """Publish what the journal holds past the cursor; the number of documents."""
        count = 0
        for record in read_records(self.journal.directory, self._cursor):
            if record.kind is RecordKind.DOCUMENT:
                self._publish(record.name, record.body, record.start)
                count += 1
        self._advance()
        return count

    def __call__(self, name: str, doc: Document) -> None:
        at = self.journal.position
        body = cast("Mapping[str, Any]", doc)
        self.journal.append_document(name, body)
        self._publish(name, body, at)

    def mark(self, name: str, data: Mapping[str, Any]) -> None:
        """Make a safety record durable (in the journal) before the instrument acts again."""
        self.journal.mark(name, data)

    def wait_stored(self, timeout: float | None = None) -> bool:
        """True: the broker holds every document (the consumer stores them in Tiled)."""
        return True

    def close(self) -> None:
        """Record the last confirmed position, hang up, close the journal."""
        try:
            self._advance()
        finally:
            self.publisher.close()
            self.journal.close()


@contextlib.contextmanager
def bus_path(data_dir: Path | str, address: BusAddress, exchange: str = EXCHANGE, *,
             sync: bool = True) -> Iterator[BusPath]:
    """The journal of ``data_dir`` and a publisher to ``exchange`` at the broker ``address``.

    Raises BusError (the broker does not answer) or JournalError before anything is written.
    """
    publisher = Publisher(address, exchange)
    try:
        journal = Journal(journal_dir(data_dir), sync=sync)
    except BaseException:
        publisher.close()
        raise
    path = BusPath(journal, publisher)
    try:
        sent = path.catch_up()
        if sent:
            logger.warning("published %d journaled documents the broker had not confirmed",
                           sent)
        yield path
    finally:
        path.close()
