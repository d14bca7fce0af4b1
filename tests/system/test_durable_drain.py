"""The drain against a real Tiled: a run Tiled holds in part (the drain died mid-run) is sent
again whole, with no event twice; a run already whole is skipped; a run without images reads
as an empty stack."""

from __future__ import annotations

import numpy as np
import pytest
from event_model import compose_run

from spm_bluesky.storage import read_image_stream, read_stream_table
from spm_bluesky.storage.drain import Drain
from spm_bluesky.storage.journal import Journal, read_cursor

pytestmark = pytest.mark.integration


def _run(n: int, seed: int):
    rng = np.random.default_rng(seed)
    bundle = compose_run(metadata={"plan_name": "drain-test"})
    docs = [("start", bundle.start_doc)]
    desc = bundle.compose_descriptor(name="primary", data_keys={
        "img": {"source": "x", "dtype": "array", "shape": [8, 8], "dtype_numpy": "<f4"},
        "x": {"source": "x", "dtype": "number", "shape": []}})
    docs.append(("descriptor", desc.descriptor_doc))
    for i in range(n):
        docs.append(("event", desc.compose_event(
            data={"img": rng.random((8, 8), dtype=np.float32), "x": float(i)},
            timestamps={"img": 0.0, "x": 0.0})))
    docs.append(("stop", bundle.compose_stop()))
    return docs


def test_partial_run_is_sent_again_whole_and_nothing_twice(tmp_path, tiled_server):
    whole, partial = _run(5, seed=1), _run(6, seed=2)
    journal = Journal(tmp_path, sync=False)
    for name, doc in [*whole, *partial[:4]]:  # the second run: start, descriptor, 2 events
        journal(name, doc)
    first = Drain(tmp_path, tiled_server.client)
    assert first.drain_once()
    client = tiled_server.client()
    uid = partial[0][1]["uid"]
    assert "stop" not in client[uid].metadata
    assert len(read_stream_table(client[uid], "primary")) == 2  # in Tiled in part
    assert read_cursor(tmp_path) == first.stats.acknowledged  # the partial run's start

    # That drain dies; the session goes on; a new drain starts from the cursor.
    for name, doc in partial[4:]:
        journal(name, doc)
    journal.close()
    second = Drain(tmp_path, tiled_server.client)
    while second.drain_once():
        pass
    assert second.stats.runs_skipped == 0 and second.stats.runs_resent == 1
    stack = read_image_stream(client[uid], "img")
    assert list(stack.seq_num) == [1, 2, 3, 4, 5, 6]
    assert len(read_stream_table(client[uid], "primary")) == 6  # no row twice
    expected = np.stack([doc["data"]["img"] for name, doc in partial if name == "event"])
    np.testing.assert_array_equal(stack.images, expected)
    assert client[uid].metadata["stop"]["exit_status"] == "success"

    # Everything again from the start of the journal: whole runs are skipped, not doubled.
    (tmp_path / "cursor.json").unlink()
    third = Drain(tmp_path, tiled_server.client)
    while third.drain_once():
        pass
    assert third.stats.runs_skipped == 2 and third.stats.runs_resent == 0
    assert len(read_image_stream(client[whole[0][1]["uid"]], "img").images) == 5


def test_a_run_without_images_reads_as_an_empty_stack(tmp_path, tiled_server):
    bundle = compose_run(metadata={"plan_name": "drain-test"})
    with Journal(tmp_path, sync=False) as journal:
        journal("start", bundle.start_doc)
        journal("stop", bundle.compose_stop(exit_status="abort", reason="killed"))
    drain = Drain(tmp_path, tiled_server.client)
    drain.drain_once()
    run = tiled_server.client()[bundle.start_doc["uid"]]
    stack = read_image_stream(run, "img")
    assert stack.images.shape[0] == 0 and stack.images.ndim == 3
    assert run.metadata["stop"]["exit_status"] == "abort"
