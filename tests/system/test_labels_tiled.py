"""Labels of stored images against a real Tiled server: round trip, newest wins, refusals.

The labelled session is written the way every run is (event-model documents through the
project's TiledWriter): one run with three images and one coarse run without any.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from typing import NamedTuple

import numpy as np
import pytest
from event_model import compose_run

from spm_bluesky import schema
from spm_bluesky.storage import (
    ImageLabel,
    LabelClass,
    LabelError,
    read_labels,
    read_stream_table,
    runs_of_plan,
    write_labels,
)
from spm_bluesky.storage.importer import store_run

pytestmark = pytest.mark.integration


def image_run(client, session_uid: str, n_images: int,
              plan: str = schema.AUTONOMOUS_SCAN) -> str:
    """Store a run of ``session_uid`` with ``n_images`` 16 x 16 frames (none: a coarse run
    whose ``primary`` holds a status reading); its uid."""
    now = time.time()
    run = compose_run(time=now, metadata={schema.PLAN_NAME: plan,
                                          schema.SESSION_UID: session_uid})
    if n_images:
        keys = {schema.SCAN_IMAGE: {"source": "test", "dtype": "array", "shape": [16, 16],
                                    "dtype_numpy": "<f4"},
                schema.SCAN_SIZE: {"source": "test", "dtype": "number", "shape": []}}
        rows = [{schema.SCAN_IMAGE: np.full((16, 16), i, np.float32), schema.SCAN_SIZE: 1e-8}
                for i in range(n_images)]
    else:
        keys = {schema.STATUS_Z: {"source": "test", "dtype": "number", "shape": []}}
        rows = [{schema.STATUS_Z: 0.0}]
    descriptor = run.compose_descriptor(name=schema.PRIMARY, data_keys=keys, time=now)
    docs = [("start", run.start_doc), ("descriptor", descriptor.descriptor_doc)]
    docs += [("event", descriptor.compose_event(data=row, timestamps=dict.fromkeys(row, now),
                                                seq_num=i + 1, time=now))
             for i, row in enumerate(rows)]
    docs.append(("stop", run.compose_stop(time=now)))
    return store_run(client, docs)


class Stored(NamedTuple):
    """A fresh stored session: its uid, its image run, its coarse run, and an image run of
    another session."""

    sid: str
    run: str
    coarse: str
    foreign: str


@pytest.fixture
def session(tiled_client) -> Stored:
    uid = uuid.uuid4().hex
    return Stored(uid, image_run(tiled_client, uid, 3),
                  image_run(tiled_client, uid, 0, plan=schema.APPROACH),
                  image_run(tiled_client, uuid.uuid4().hex, 1))


def label(session_uid: str, run_uid: str, seq_num: int, cls: str = "good",
          when: float = 1.0e9, **extra) -> ImageLabel:
    return ImageLabel(session_uid, run_uid, seq_num, LabelClass(cls), "ada", when, **extra)


def label_runs(client, session_uid: str) -> int:
    return len(runs_of_plan(client, schema.LABEL_IMAGES, session_uid))


def test_labels_round_trip_through_tiled(tiled_client, session) -> None:
    sid, run = session.sid, session.run
    written = [label(sid, run, 1, "good", model_id="assessor-1", model_label="blunt",
                     p_good=0.25),
               label(sid, run, 3, "multi_apex")]
    uid = write_labels(tiled_client, written)
    assert read_labels(tiled_client, sid) == written
    stored = tiled_client[uid]
    start = stored.metadata["start"]
    assert start[schema.PLAN_NAME] == schema.LABEL_IMAGES
    assert start[schema.SESSION_UID] == sid and start[schema.WHO] == "ada"
    table = read_stream_table(stored, schema.LABELS)
    assert table is not None and list(table[schema.LABEL_CLASS]) == ["good", "multi_apex"]
    assert sid not in {lab.session_uid for lab in read_labels(tiled_client, uuid.uuid4().hex)}
    assert set(written) <= set(read_labels(tiled_client))


def test_the_newest_label_of_an_image_wins(tiled_client, session) -> None:
    sid, run = session.sid, session.run
    write_labels(tiled_client, [label(sid, run, 2, "blunt", when=100.0),
                                label(sid, run, 1, "good", when=100.0)])
    write_labels(tiled_client, [label(sid, run, 2, "unstable", when=200.0)])
    # written later but labelled earlier (a page left open): the older judgement loses
    write_labels(tiled_client, [label(sid, run, 1, "adsorbate", when=50.0)])
    current = {lab.seq_num: lab.label for lab in read_labels(tiled_client, sid)}
    assert current == {1: LabelClass.GOOD, 2: LabelClass.UNSTABLE}
    assert label_runs(tiled_client, sid) == 3


@pytest.mark.parametrize(("bad", "message"), [
    (lambda s: label(s.sid, s.foreign, 1), "does not belong to session"),
    (lambda s: label("no-such-session", s.run, 1), "no session 'no-such-session'"),
    (lambda s: label("no-such-session", "no-such-run", 1), "no session 'no-such-session'"),
    (lambda s: label(s.sid, "no-such-run", 1), "no run 'no-such-run'"),
    (lambda s: label(s.sid, s.coarse, 1), "holds no images"),
    (lambda s: label(s.sid, s.run, 4), "no image with seq_num 4"),
    (lambda s: label(s.sid, s.run, 0), "not an event number"),
    (lambda s: replace(label(s.sid, s.run, 1), label="sharp"), "unknown label class 'sharp'"),
    (lambda s: replace(label(s.sid, s.run, 1), who=" "), "empty"),
    (lambda s: label(s.sid, s.run, 1, p_good=1.5), "not a probability"),
    (lambda s: label(s.sid, s.run, 1, when=float("nan")), "not a time"),
])
def test_a_bad_label_is_refused_and_nothing_is_written(tiled_client, session, bad,
                                                       message) -> None:
    good = label(session.sid, session.run, 2)
    with pytest.raises(LabelError, match=message):
        write_labels(tiled_client, [good, bad(session)])
    assert label_runs(tiled_client, session.sid) == 0
    assert read_labels(tiled_client, session.sid) == []


def test_a_write_is_one_session_and_one_person(tiled_client, session) -> None:
    sid, run = session.sid, session.run
    other_sid = uuid.uuid4().hex
    other_run = image_run(tiled_client, other_sid, 1)
    with pytest.raises(LabelError, match="one session"):
        write_labels(tiled_client, [label(sid, run, 1), label(other_sid, other_run, 1)])
    with pytest.raises(LabelError, match="one person"):
        write_labels(tiled_client, [label(sid, run, 1),
                                    replace(label(sid, run, 2), who="grace")])
    with pytest.raises(LabelError, match="no labels"):
        write_labels(tiled_client, [])
    assert label_runs(tiled_client, sid) == label_runs(tiled_client, other_sid) == 0
