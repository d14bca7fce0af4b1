"""The Tiled writer of facility mode: a consumer process that stores what the bus carries.

``python -m spm_bluesky.storage.bus_consumer --tiled-uri URI`` (started by ``spm-bluesky up
--bus``) consumes the exchange's durable queue (:func:`~spm_bluesky.storage.bus.tiled_queue`)
and writes
each run into Tiled with the drain's writer (:class:`~spm_bluesky.storage.drain.RunFeeds`:
events in one append per stream per batch, a run Tiled holds whole skipped, a run it holds
in part deleted and written again whole). The broker URL comes from ``$SPM_BUS_URL`` and the
Tiled key from ``$SPM_TILED_API_KEY``, never from the command line.

It acknowledges only what Tiled has stored: a run's messages are acknowledged together once
its stop document is in Tiled (a skipped run's at once). Killed at any moment, the broker
gives the unacknowledged messages again, from the start of the run being written, and that
run is written again whole: nothing is lost and nothing is stored twice. A document that
arrives twice within a run (a publish the session retried) is stored once, by its uid.

When Tiled or the broker fails, it hangs up (the broker takes back what was not
acknowledged), waits (0.5 s doubling to 10 s) and starts again, for as long as it takes.
Limit: a run's documents are held unacknowledged until its stop, so a run may have at most
``--prefetch`` documents, and a run open longer than the broker's ``consumer_timeout``
(RabbitMQ: 30 min) is sent again whole after it (see docs/how-to/run-in-facility-mode.md).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tiled.client.container import Container

from spm_bluesky.storage.bus import (
    EXCHANGE,
    READY,
    URL_ENV,
    BusAddress,
    BusError,
    connect,
    declare,
    decode_message,
    parse_bus_url,
    tiled_queue,
)
from spm_bluesky.storage.drain import (
    DRAIN_BATCH,
    DRAIN_POLL,
    MAX_BACKOFF,
    DrainStats,
    Fed,
    RunFeeds,
    quiet_outages,
)
from spm_bluesky.storage.outage import STALL_S, OutageReport

logger = logging.getLogger(__name__)

#: Unacknowledged messages the broker hands the consumer at most (the longest run it takes).
PREFETCH = 20_000
#: Environment variables holding the Tiled API key, the first set one wins.
KEY_ENV = ("SPM_TILED_API_KEY", "TILED_API_KEY")


@dataclass
class ConsumerStats(DrainStats):
    """What the consumer has done: the drain's counts, plus messages and acknowledgements."""

    messages: int = 0
    acknowledged_messages: int = 0
    duplicates: int = 0
    rejected: int = 0
    connections: int = 0


class TiledConsumer:
    """Consumes the Tiled queue of ``exchange`` at the broker ``address`` into the Tiled
    ``connect_tiled`` reaches."""

    def __init__(self, address: BusAddress, connect_tiled: Callable[[], Container], *,
                 exchange: str = EXCHANGE, batch: int = DRAIN_BATCH, poll: float = DRAIN_POLL,
                 prefetch: int = PREFETCH, max_backoff: float = MAX_BACKOFF,
                 stall_warning: float = STALL_S) -> None:
        self.address, self.exchange, self.queue = address, exchange, tiled_queue(exchange)
        self.batch, self.poll, self.prefetch, self.max_backoff = batch, poll, prefetch, max_backoff
        self.stats = ConsumerStats()
        self._runs = RunFeeds(connect_tiled, self.stats)
        self._tags: dict[str, list[int]] = {}  # run uid -> its unacknowledged deliveries
        self._seen: dict[str, set[str]] = {}  # run uid -> uids of its documents fed
        self._stop = threading.Event()
        self.ready = threading.Event()
        self._report = OutageReport(
            logger, "storing stopped (%s); the broker keeps the documents and gives them "
            "again when this consumer is back", "storing again", self.stats, stall_warning)

    # -- one message ------------------------------------------------------------------------

    def _ack(self, channel: Any, tags: Sequence[int]) -> None:
        for tag in tags:
            channel.basic_ack(tag)
        self.stats.acknowledged_messages += len(tags)

    def handle(self, channel: Any, tag: int, body: bytes) -> None:
        """Store one message's document (or hold it until its run is stored)."""
        self.stats.messages += 1
        try:
            name, doc = decode_message(body)
        except ValueError as err:
            logger.warning("message %d dropped: %s", tag, err)
            channel.basic_reject(tag, requeue=False)
            self.stats.rejected += 1
            return
        run = self._runs.run_of(name, doc)
        doc_uid = str(doc.get("uid", ""))
        if name == "start":
            self._seen[run] = set()
        elif run in self._seen and doc_uid and doc_uid in self._seen[run]:
            self._tags.setdefault(run, []).append(tag)  # a publish retried: stored once
            self.stats.duplicates += 1
            return
        with self._report.waiting():
            uid, fed = self._runs.feed(name, doc, tag)
        if fed is Fed.OPEN:
            self._tags.setdefault(uid, []).append(tag)
            self._seen.setdefault(uid, set()).add(doc_uid)
            return
        self._seen.pop(uid, None)
        self._ack(channel, [*self._tags.pop(uid, []), tag])  # stored, skipped or orphaned

    # -- the loop ---------------------------------------------------------------------------

    def _consume(self) -> None:
        connection = connect(self.address)
        self.stats.connections += 1
        try:
            channel = connection.channel()
            declare(channel, self.exchange)
            channel.basic_qos(prefetch_count=self.prefetch)
            if not self.ready.is_set():
                print(f"{READY} {self.queue} at {self.address.url}", flush=True)
                self.ready.set()
            held = 0
            for method, _props, body in channel.consume(self.queue,
                                                        inactivity_timeout=self.poll):
                if self._stop.is_set():
                    break
                if method is None:  # nothing came for a moment: make what is held readable
                    if held:
                        self._flush()
                        held = 0
                    continue
                self.handle(channel, method.delivery_tag, body)
                held += 1
                if held >= self.batch:
                    self._flush()
                    held = 0
        finally:
            if connection.is_open:  # the broker takes back what was not acknowledged
                with contextlib.suppress(Exception):
                    connection.close()

    def _flush(self) -> None:
        with self._report.waiting():
            self._runs.flush()

    def _forget(self) -> None:
        self._runs.reset()
        self._tags.clear()
        self._seen.clear()

    def run(self) -> None:
        """Consume until :meth:`stop`; through broker and Tiled outages of any length."""
        quiet_outages()
        watch = self._report.watch(self._stop, "bus-consumer-watch")
        backoff = 0.5
        while not self._stop.is_set():
            try:
                self._consume()
                backoff = 0.5
            except Exception as err:  # the broker or Tiled away, refusing, timing out
                self._report.failed(str(err) if isinstance(err, BusError)
                                    else type(err).__name__)
                self.stats.last_error = f"{type(err).__name__}: {err}"
                self._forget()
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff)
                continue
            self._forget()
        watch.join()
        logger.info("stopped: %d messages, %d runs stored", self.stats.messages,
                    self.stats.runs_stored)

    def stop(self) -> None:
        """End :meth:`run` within ``poll`` seconds (what is unacknowledged goes back)."""
        self._stop.set()


def _tiled_key() -> str | None:
    return next((os.environ[name] for name in KEY_ENV if os.environ.get(name)), None)


def main(argv: Sequence[str] | None = None) -> int:
    """The consumer process; see the module doc."""
    parser = argparse.ArgumentParser(
        prog="python -m spm_bluesky.storage.bus_consumer",
        description=f"Store the documents of the bus in Tiled (broker URL in ${URL_ENV}, "
                    f"Tiled key in ${KEY_ENV[0]}).")
    parser.add_argument("--tiled-uri", required=True, help="the Tiled server")
    parser.add_argument("--exchange", default=EXCHANGE,
                        help="the exchange whose Tiled queue to consume")
    parser.add_argument("--prefetch", type=int, default=PREFETCH,
                        help="unacknowledged messages at most (the longest run)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pika").setLevel(logging.CRITICAL)  # it logs every refused connect
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request
    url = os.environ.get(URL_ENV)
    if not url:
        parser.error(f"no broker: set ${URL_ENV}")
    try:
        address = parse_bus_url(url)
    except BusError as err:
        parser.error(str(err))
    from spm_bluesky.storage.server import connect as connect_tiled

    key = _tiled_key()
    if not key:
        parser.error(f"no Tiled key: set ${KEY_ENV[0]}")
    consumer = TiledConsumer(address, lambda: connect_tiled(args.tiled_uri, key),
                             exchange=args.exchange, prefetch=args.prefetch)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: consumer.stop())
    consumer.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
