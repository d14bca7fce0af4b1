"""The local journal: framing, numpy arrays bit for bit, torn tails, the lock, closing runs
an earlier process left open, and the checks before a session acts."""

from __future__ import annotations

import os

import numpy as np
import pytest
from event_model import compose_run

from spm_bluesky.storage.journal import (
    ABORT_REASON,
    Journal,
    JournalError,
    Position,
    RecordKind,
    open_runs,
    read_cursor,
    read_marks,
    read_records,
    segments,
    write_cursor,
)
from spm_bluesky.storage.journal_runs import journal_runs
from spm_bluesky.storage.preflight import check_durable
from spm_bluesky.storage.server import scrub_api_key


def _run(session: str = "s1", n: int = 3, seed: int = 0):
    """The documents of one small run with a 4x4 float32 image per event."""
    rng = np.random.default_rng(seed)
    bundle = compose_run(metadata={"session_uid": session, "plan_name": "t"})
    docs = [("start", bundle.start_doc)]
    desc = bundle.compose_descriptor(name="primary", data_keys={
        "img": {"source": "x", "dtype": "array", "shape": [4, 4], "dtype_numpy": "<f4"},
        "x": {"source": "x", "dtype": "number", "shape": []}})
    docs.append(("descriptor", desc.descriptor_doc))
    for i in range(n):
        docs.append(("event", desc.compose_event(
            data={"img": rng.random((4, 4), dtype=np.float32), "x": np.float64(i)},
            timestamps={"img": 0.0, "x": 0.0})))
    docs.append(("stop", bundle.compose_stop()))
    return docs


def test_documents_and_marks_come_back_bit_for_bit(tmp_path):
    docs = _run()
    with Journal(tmp_path, sync=True) as journal:
        for name, doc in docs:
            journal(name, doc)
        journal.mark("crash", {"x": 1e-7, "mask": np.arange(3, dtype=np.int64)})
    records = list(read_records(tmp_path))
    assert [r.name for r in records] == [n for n, _ in docs] + ["crash"]
    for (name, doc), record in zip(docs, records, strict=False):
        if name == "event":
            np.testing.assert_array_equal(record.body["data"]["img"], doc["data"]["img"])
            assert record.body["data"]["img"].dtype == np.float32
            assert record.body["seq_num"] == doc["seq_num"]
    (mark,) = read_marks(tmp_path, "crash")
    assert mark.kind is RecordKind.MARK and mark.body["x"] == 1e-7
    assert mark.body["mask"].tolist() == [0, 1, 2] and "time" in mark.body
    assert records[1].start == records[0].end  # records follow each other


def test_object_arrays_are_refused_not_pickled(tmp_path):
    with Journal(tmp_path, sync=False) as journal, pytest.raises(TypeError, match="objects"):
        journal.mark("bad", {"a": np.array([object()], dtype=object)})


def test_a_torn_tail_is_skipped_and_the_next_process_writes_a_new_segment(tmp_path):
    docs = _run(n=2)
    with Journal(tmp_path, sync=False) as journal:
        for name, doc in docs[:-1]:  # killed before the stop document
            journal(name, doc)
    (first,) = segments(tmp_path)
    path = tmp_path / f"seg-{first:08d}.jnl"
    whole = len(list(read_records(tmp_path)))
    with open(path, "ab") as f:  # a record cut off by the kill
        f.write(b"SPMJ\x00\x10\x00\x00")
    assert len(list(read_records(tmp_path))) == whole
    with Journal(tmp_path, sync=False) as journal:
        assert journal.closed_runs == [docs[0][1]["uid"]]
        assert journal.position.segment == first + 1
    records = list(read_records(tmp_path))
    stop = records[-1]
    assert stop.name == "stop" and stop.body["exit_status"] == "abort"
    assert stop.body["reason"] == ABORT_REASON and stop.body["run_start"] == docs[0][1]["uid"]
    assert open_runs(tmp_path) == {}


def test_runs_before_the_cursor_are_not_closed_again(tmp_path):
    with Journal(tmp_path, sync=False) as journal:
        for name, doc in _run(n=1):
            journal(name, doc)
        end = journal.position
    write_cursor(tmp_path, end)
    assert read_cursor(tmp_path) == end
    with Journal(tmp_path, sync=False) as journal:
        assert journal.closed_runs == []
    assert read_cursor(tmp_path) == Position(end.segment, end.offset)


def test_one_writer_at_a_time(tmp_path):
    with Journal(tmp_path, sync=False), pytest.raises(JournalError, match="another process"):
        Journal(tmp_path, sync=False)


def test_journal_runs_keep_the_last_take_of_each_event(tmp_path):
    docs = _run(session="mine", n=3)
    retake = dict(docs[3][1])  # the second event again, as after a suspender's rewind
    retake["data"] = {**retake["data"], "x": 99.0}
    with Journal(tmp_path, sync=False) as journal:
        for name, doc in [*docs[:-1], ("event", retake), docs[-1], *_run(session="other")]:
            journal(name, doc)
    (run,) = journal_runs(tmp_path, "mine")
    assert run.stop is not None and run.uid == docs[0][1]["uid"]
    rows = run.rows("primary")
    assert [seq for seq, _ in rows] == [1, 2, 3]
    assert rows[1][1]["x"] == 99.0


def test_check_durable_refuses_before_anything_is_written(tmp_path):
    assert check_durable(tmp_path / "ok") == tmp_path / "ok" / "journal"
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "journal").write_text("a file where the journal directory goes")
    with pytest.raises(JournalError, match="cannot write the journal"):
        check_durable(blocked)
    with pytest.raises(JournalError, match="MiB free"):
        check_durable(tmp_path / "ok", min_free_bytes=1 << 62)
    assert not os.path.exists(tmp_path / "ok" / "journal" / ".preflight")


def test_api_keys_are_scrubbed_from_urls():
    line = '127.0.0.1 - "GET /api/v1/metadata/?api_key=abc123&page=2 HTTP/1.1" 200'
    assert scrub_api_key(line) == ('127.0.0.1 - "GET /api/v1/metadata/?api_key=[redacted]'
                                   '&page=2 HTTP/1.1" 200')
    assert scrub_api_key("no key here") == "no key here"


def test_segments_tiled_holds_are_pruned_and_their_marks_kept(tmp_path):
    whole, killed = _run(session="a", n=2), _run(session="b", n=2, seed=1)
    with Journal(tmp_path, sync=False) as journal:  # segment 1: a closed run and a mark
        for name, doc in whole:
            journal(name, doc)
        journal.mark("crash", {"x": 1e-7, "crash_count": 1, "clock": 5.0})
    with Journal(tmp_path, sync=False) as journal:  # segment 2: a run cut off by a kill
        start = journal.position
        for name, doc in killed[:-1]:
            journal(name, doc)
    write_cursor(tmp_path, start)  # the drain: everything before run b is in Tiled
    with Journal(tmp_path, sync=False, prune=True) as journal:  # segment 3 closes run b
        assert journal.pruned == [1]
    assert segments(tmp_path) == [2, 3]
    assert [m.body["x"] for m in read_marks(tmp_path, "crash")] == [1e-7]
    assert [run.uid for run in journal_runs(tmp_path, "b")] == [killed[0][1]["uid"]]
    assert journal_runs(tmp_path, "a") == []

    write_cursor(tmp_path, Position(4, 0))  # the drain took run b's abort stop too
    with Journal(tmp_path, sync=False) as journal:  # facility mode: nothing goes
        assert journal.pruned == []
    assert segments(tmp_path) == [2, 3, 4]
    write_cursor(tmp_path, Position(5, 0))
    with Journal(tmp_path, sync=False, prune=True) as journal:
        assert journal.pruned == [2, 3, 4]
    assert segments(tmp_path) == [5]
    (mark,) = read_marks(tmp_path, "crash")
    assert mark.body == {"x": 1e-7, "crash_count": 1, "clock": 5.0,
                         "time": mark.body["time"]}


def test_a_segment_with_a_run_open_before_the_cursor_is_kept(tmp_path):
    docs = _run(n=1)
    with Journal(tmp_path, sync=False) as journal:
        for name, doc in docs[:-1]:
            journal(name, doc)
    write_cursor(tmp_path, Position(2, 0))  # past the run's start, yet it has no stop
    with Journal(tmp_path, sync=False, prune=True) as journal:
        assert journal.pruned == []
    assert segments(tmp_path) == [1, 2]
