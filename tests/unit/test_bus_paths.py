"""Facility mode's bookkeeping without a broker: the session journals each document before
publishing it and republishes what the broker never confirmed; the Tiled consumer
acknowledges a run's messages only once the run is stored, once per document."""

from __future__ import annotations

import socket

import numpy as np
import pytest
from event_model import compose_run

from spm_bluesky.storage.bus import BusError, decode_message, encode_message, parse_bus_url
from spm_bluesky.storage.bus_consumer import TiledConsumer
from spm_bluesky.storage.bus_publish import BusPath, bus_path
from spm_bluesky.storage.drain import Fed
from spm_bluesky.storage.journal import (
    ABORT_REASON,
    Journal,
    RecordKind,
    read_cursor,
    read_records,
)


def _run(session: str = "s1", n: int = 3) -> list[tuple[str, dict]]:
    bundle = compose_run(metadata={"session_uid": session, "plan_name": "t"})
    desc = bundle.compose_descriptor(name="primary", data_keys={
        "img": {"source": "x", "dtype": "array", "shape": [2, 2], "dtype_numpy": "<f4"}})
    docs = [("start", bundle.start_doc), ("descriptor", desc.descriptor_doc)]
    for i in range(n):
        docs.append(("event", desc.compose_event(
            data={"img": np.full((2, 2), i, np.float32)}, timestamps={"img": 0.0})))
    docs.append(("stop", bundle.compose_stop()))
    return docs


# -- the session's side -------------------------------------------------------------------------


class FakePublisher:
    """Records what is published; checks the journal already holds it; fails on demand."""

    def __init__(self, journal: Journal, fail_at: int | None = None) -> None:
        self.journal, self.fail_at = journal, fail_at
        self.sent: list[tuple[str, str, str]] = []

    def publish(self, key: str, body: bytes, props) -> None:
        name, doc = decode_message(body)
        journaled = [r.body.get("uid") for r in read_records(self.journal.directory)
                     if r.kind is RecordKind.DOCUMENT]
        assert doc["uid"] in journaled, "published before it was journaled"
        if self.fail_at is not None and len(self.sent) == self.fail_at:
            raise KeyboardInterrupt("killed before the confirm")
        self.sent.append((key, name, doc["uid"]))

    def close(self) -> None:
        pass


def test_each_document_is_journaled_then_published_and_the_cursor_follows_stops(tmp_path):
    journal = Journal(tmp_path, sync=False)
    publisher = FakePublisher(journal)
    path = BusPath(journal, publisher)  # type: ignore[arg-type]
    first, second = _run("s1"), _run("s1", n=2)
    for name, doc in first:
        path(name, doc)
    after_first = read_cursor(tmp_path)
    assert after_first == journal.position  # every run closed: all confirmed
    for name, doc in second[:3]:
        path(name, doc)
    assert read_cursor(tmp_path) == after_first  # an open run holds the cursor back
    assert [key for key, _, _ in publisher.sent][:2] == [
        f"s1.{first[0][1]['uid']}.start", f"s1.{first[0][1]['uid']}.descriptor"]
    assert [name for _, name, _ in publisher.sent] == [n for n, _ in first + second[:3]]
    path.close()


def test_what_the_broker_never_confirmed_is_published_at_the_next_start(tmp_path):
    journal = Journal(tmp_path, sync=False)
    first, second = _run("s1"), _run("s1", n=4)
    path = BusPath(journal, FakePublisher(journal, fail_at=len(first) + 3))  # type: ignore[arg-type]
    for name, doc in first:
        path(name, doc)
    with pytest.raises(KeyboardInterrupt):  # the session dies mid-run, before a confirm
        for name, doc in second:
            path(name, doc)
    journal.close()  # a kill: no close() of the path

    journal = Journal(tmp_path, sync=False)  # closes the open run with an aborting stop
    publisher = FakePublisher(journal)
    again = BusPath(journal, publisher)  # type: ignore[arg-type]
    assert again.catch_up() == 5
    names = [name for _, name, _ in publisher.sent]
    uids = [uid for _, _, uid in publisher.sent]
    assert names == ["start", "descriptor", "event", "event", "stop"]
    assert uids[:4] == [doc["uid"] for _, doc in second[:4]]  # the open run, whole again
    stop = [r for r in read_records(tmp_path) if r.name == "stop"][-1].body
    assert stop["exit_status"] == "abort" and stop["reason"] == ABORT_REASON
    assert read_cursor(tmp_path) == journal.position
    assert again.catch_up() == 0  # nothing twice
    again.close()


# -- the consumer's side ------------------------------------------------------------------------


class FakeChannel:
    def __init__(self) -> None:
        self.acked: list[int] = []
        self.rejected: list[tuple[int, bool]] = []

    def basic_ack(self, tag: int) -> None:
        self.acked.append(tag)

    def basic_reject(self, tag: int, requeue: bool) -> None:
        self.rejected.append((tag, requeue))


class FakeRuns:
    """Stands in for the drain's RunFeeds: ``whole`` runs are skipped, others are fed."""

    def __init__(self, whole: set[str] | None = None) -> None:
        self.whole = whole or set()
        self.fed: list[tuple[str, str]] = []
        self._run_of_descriptor: dict[str, str] = {}

    def run_of(self, name: str, doc: dict) -> str:
        if name == "start":
            return doc["uid"]
        if name == "descriptor":
            self._run_of_descriptor[doc["uid"]] = doc["run_start"]
            return doc["run_start"]
        if name == "event":
            return self._run_of_descriptor.get(doc["descriptor"], "")
        return doc.get("run_start", "")

    def feed(self, name: str, doc: dict, start=None) -> tuple[str, Fed]:
        uid = self.run_of(name, doc)
        if uid in self.whole:
            return uid, Fed.SKIPPED
        if not uid:
            return uid, Fed.ORPHAN
        self.fed.append((name, doc["uid"]))
        return uid, Fed.STORED if name == "stop" else Fed.OPEN


def _consumer(runs: FakeRuns) -> TiledConsumer:
    consumer = TiledConsumer(None, lambda: None)  # type: ignore[arg-type]
    consumer._runs = runs  # type: ignore[assignment]
    return consumer


def _deliver(consumer: TiledConsumer, channel: FakeChannel, docs, first_tag: int = 1) -> None:
    for tag, (name, doc) in enumerate(docs, start=first_tag):
        consumer.handle(channel, tag, encode_message(name, doc))


def test_a_run_is_acknowledged_only_once_it_is_stored():
    consumer, channel = _consumer(FakeRuns()), FakeChannel()
    docs = _run()
    _deliver(consumer, channel, docs[:-1])
    assert channel.acked == []  # nothing stored whole yet: nothing acknowledged
    _deliver(consumer, channel, docs[-1:], first_tag=len(docs))
    assert sorted(channel.acked) == list(range(1, len(docs) + 1))
    assert consumer.stats.acknowledged_messages == len(docs)


def test_a_document_delivered_twice_in_a_run_is_stored_once():
    runs = FakeRuns()
    consumer, channel = _consumer(runs), FakeChannel()
    docs = _run()
    _deliver(consumer, channel, [*docs[:3], docs[2], *docs[3:]])  # an event published twice
    assert [uid for _, uid in runs.fed] == [doc["uid"] for _, doc in docs]
    assert sorted(channel.acked) == list(range(1, len(docs) + 2))
    assert consumer.stats.duplicates == 1


def test_a_run_sent_again_whole_is_acknowledged_with_its_first_take():
    runs = FakeRuns()
    consumer, channel = _consumer(runs), FakeChannel()
    docs = _run()
    _deliver(consumer, channel, docs[:3])  # a first take cut short (the session was killed)
    _deliver(consumer, channel, docs, first_tag=4)  # republished whole from the journal
    assert sorted(channel.acked) == list(range(1, 4 + len(docs)))
    assert [n for n, _ in runs.fed].count("event") == 1 + 3


def test_a_run_tiled_holds_whole_is_acknowledged_at_once_and_bad_bodies_are_dropped():
    docs = _run()
    consumer, channel = _consumer(FakeRuns(whole={docs[0][1]["uid"]})), FakeChannel()
    _deliver(consumer, channel, docs[:2])
    assert channel.acked == [1, 2]
    consumer.handle(channel, 9, b"\xc1 not msgpack")
    assert channel.rejected == [(9, False)] and consumer.stats.rejected == 1


def test_a_broker_that_does_not_answer_is_one_line_before_the_journal_is_touched(tmp_path):
    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    address = parse_bus_url(f"amqp://guest:topsecret@127.0.0.1:{port}/", environ={})
    with pytest.raises(BusError) as err, bus_path(tmp_path, address):
        pass
    message = str(err.value)
    assert "does not answer" in message and "\n" not in message
    assert "topsecret" not in message and "amqp://guest@127.0.0.1" in message
    assert not (tmp_path / "journal").exists()  # nothing written, nothing closed
