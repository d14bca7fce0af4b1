"""The whole chain, for real: IOC subprocess -> Channel Access -> ophyd-async -> RunEngine ->
TiledWriter -> Tiled server -> readers (this process, fed documents, and another process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid

import numpy as np
import pytest
from bluesky import RunEngine
from caproto.threading.client import Context
from ophyd_async.core import init_devices

from spm_bluesky.devices.stm import STM
from spm_bluesky.domain import limits
from spm_bluesky.plans import survey
from spm_bluesky.storage import (
    connect,
    feed_documents,
    read_image_stream,
    runs_by_session,
    subscribe_writer,
)

pytestmark = pytest.mark.integration

N_IMAGES = 20
IMAGE_KEY = "stm-scan-image"


class ServedFrames:
    """Every frame the IOC publishes, captured by an independent CA client (caproto)."""

    def __init__(self, ioc) -> None:
        self.frames: list[np.ndarray] = []
        self._lock = threading.Lock()
        self._context = Context()
        (image,) = self._context.get_pvs(ioc.pv("Scan:Image"), timeout=5)
        image.wait_for_connection(timeout=10)
        self._initial = True
        self._subscription = image.subscribe(data_type="native")
        self._subscription.add_callback(self._on_image)

    def _on_image(self, sub, response) -> None:
        with self._lock:
            if self._initial:  # the value current at subscription time is no new frame
                self._initial = False
                return
            self.frames.append(np.array(response.data, dtype=np.float32))

    def close(self) -> None:
        self._subscription.clear()
        self._context.disconnect()


def primary_events(docs: list[tuple[str, dict]]) -> list[dict]:
    """The events of the ``primary`` stream, in order."""
    primary = {d["uid"] for n, d in docs if n == "descriptor" and d["name"] == "primary"}
    return [d for n, d in docs if n == "event" and d["descriptor"] in primary]


def test_survey_of_20_images_lands_in_tiled_exactly_as_served(start_ioc, tiled_server, tmp_path):
    ioc = start_ioc(seed=3)
    served = ServedFrames(ioc)
    RE = RunEngine(call_returns_result=True)
    client = connect(tiled_server.uri, tiled_server.api_key)
    subscribe_writer(RE, client)
    live: list[tuple[str, dict]] = []
    RE.subscribe(lambda name, doc: live.append((name, doc)))
    with init_devices():
        stm = STM(ioc.prefix, name="stm", sim=True)
    session = f"chain-{uuid.uuid4().hex[:8]}"

    result = RE(survey(stm, N_IMAGES, mask_path=str(tmp_path / "mask.json"),
                       session_uid=session))
    (uid,) = result.run_start_uids
    assert result.plan_result == N_IMAGES
    served.close()

    run = connect(tiled_server.uri, tiled_server.api_key)[uid]
    start = run.metadata["start"]
    assert start["plan_name"] == "survey" and start["session_uid"] == session
    assert start["twin_seed"] == 3
    assert run.metadata["stop"]["exit_status"] == "success"

    # 20 images of the right shape and dtype, in metres.
    stack = read_image_stream(run, IMAGE_KEY)
    images = stack.images
    assert images.shape == (N_IMAGES, 64, 64) and images.dtype == np.float32
    assert stack.units == "m" and list(stack.data_key["shape"]) == [64, 64]

    # The stored images equal what the IOC served, frame by frame.
    assert len(served.frames) == N_IMAGES
    for stored, frame in zip(images, served.frames, strict=True):
        np.testing.assert_array_equal(stored, frame[: 64 * 64].reshape(64, 64))

    # run.documents() replays into a callback that sees the same events as the live one.
    replayed: list[tuple[str, dict]] = []
    feed_documents(run, lambda name, doc: replayed.append((name, doc)))
    assert replayed[0][0] == "start" and replayed[-1][0] == "stop"
    live_events, replay_events = primary_events(live), primary_events(replayed)
    assert [e["seq_num"] for e in replay_events] == list(range(1, N_IMAGES + 1))
    assert [e["seq_num"] for e in replay_events] == [e["seq_num"] for e in live_events]
    for a, b in zip(live_events, replay_events, strict=True):
        for key in ("stm-scan-center_x", "stm-scan-center_y", "stm-scan-clock"):
            assert a["data"][key] == b["data"][key]

    # Positions and clock as stored: distinct spots inside the usable range, time moving on
    # by at least one frame (10 nm, 64 px at 80 nm/s: 16 s) per image.
    xs = np.array([e["data"]["stm-scan-center_x"] for e in replay_events])
    ys = np.array([e["data"]["stm-scan-center_y"] for e in replay_events])
    clock = np.array([e["data"]["stm-scan-clock"] for e in replay_events])
    assert len(set(zip(xs, ys, strict=True))) == N_IMAGES
    assert np.all(np.abs(xs) <= limits.CENTER_HALF_RANGE)
    assert np.all(np.abs(ys) <= limits.CENTER_HALF_RANGE)
    assert np.all(np.diff(clock) >= 16.0 - 1e-6)

    # The session finds it.
    assert uid in [r.metadata["start"]["uid"] for r in runs_by_session(client, session).values()]

    # Another Python process reads the same run by uid.
    code = (
        "import json, os, sys\n"
        "from spm_bluesky.storage import connect, read_image_stream\n"
        "run = connect(sys.argv[1], os.environ['TILED_API_KEY'])[sys.argv[2]]\n"
        "imgs = read_image_stream(run, 'stm-scan-image').images\n"
        "print(json.dumps({'uid': run.metadata['start']['uid'], 'shape': list(imgs.shape),\n"
        "                  'sum': float(imgs.astype('f8').sum())}))\n"
    )
    env = {**os.environ, "TILED_API_KEY": tiled_server.api_key}  # not on the command line
    out = subprocess.run([sys.executable, "-c", code, tiled_server.uri, uid], env=env,
                         capture_output=True, text=True, timeout=120, check=True).stdout
    other = json.loads(out.strip().splitlines()[-1])
    assert other["uid"] == uid and other["shape"] == [N_IMAGES, 64, 64]
    assert other["sum"] == pytest.approx(float(images.astype("f8").sum()), rel=1e-12)
