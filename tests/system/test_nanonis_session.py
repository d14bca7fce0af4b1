"""Autonomous sessions through the Nanonis backend: the simulator and the Nanonis IOC as
subprocesses, the shipped assessor, the heuristic policy, a RunEngine writing to Tiled.

The plans and devices are the ones a twin session uses, unchanged. Over the simulator the
session follows the same twin as over the direct twin IOC with the same seed: the
simulator's twin gets the same calls in the same order, and the settings cross the protocol
as float32. That rounding moves frame centres by under 1e-15 m and times by parts in 1e8,
so the images differ in their last bits only; the counts of the session (images, good
images, episodes, actions, crashes, area moves) come out the same, which is what the
comparison checks. Should a decision ever sit exactly on a threshold the counts could part:
that would show here as a difference in the first count that differs.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid

import bluesky.plan_stubs as bps
import numpy as np
import pytest
from bluesky import RunEngine
from ophyd_async.core import init_devices

from spm_bluesky.autonomy.writer import session_writer
from spm_bluesky.devices.stm import STM
from spm_bluesky.ml.agent.policies import HeuristicPolicy
from spm_bluesky.ml.assessor import load_assessor
from spm_bluesky.plans.acquire import survey
from spm_bluesky.plans.autonomous import autonomous_session
from spm_bluesky.storage import StoredRun, connect, runs_by_session
from tests.system import test_nanonis_sim
from tests.system.test_autonomous_ioc import Rig
from tests.system.test_chain import ServedFrames, primary_events
from tests.system.test_nanonis_ioc import launch_nanonis_ioc
from tests.system.test_recovery import session_images

pytestmark = pytest.mark.integration

start_sim = test_nanonis_sim.start_sim  # the simulator fixture, shared

#: Simulated hours of the comparison session (about 40 images at 64 px).
HOURS = 0.3
COUNTS = ("images", "good_images", "episodes", "actions", "crashes", "area_index", "runs")


def rig(ioc, tiled_server) -> Rig:
    """A RunEngine writing to Tiled, the STM devices and an independent frame observer."""
    served = ServedFrames(ioc)
    RE = RunEngine(call_returns_result=True)
    client = connect(tiled_server.uri, tiled_server.api_key)
    RE.subscribe(session_writer(client))
    with init_devices():
        stm = STM(ioc.prefix, name="stm", sim=True)
    return Rig(ioc, served, RE, client, stm)


def run_session(r: Rig, tmp_path, name: str, **kwargs) -> tuple[str, dict]:
    """A session on a degraded tip (so that it conditions); its uid and summary."""
    r.RE(bps.trigger(r.stm.sim.degrade, wait=True))
    session = f"{name}-{uuid.uuid4().hex[:8]}"
    summary = r.RE(autonomous_session(
        r.stm, load_assessor(), HeuristicPolicy(), session_uid=session, bad_limit=3,
        run_images=30, mask_path=str(tmp_path / f"{name}.json"), **kwargs)).plan_result
    return session, summary


@pytest.mark.timeout(600)
def test_session_over_the_simulator_matches_the_twin_ioc(start_sim, start_ioc, _ioc_launcher,
                                                         tiled_server, tmp_path):
    seed = 21
    sim = start_sim(seed)
    nanonis = rig(launch_nanonis_ioc(_ioc_launcher, sim), tiled_server)
    try:
        session, summary = run_session(nanonis, tmp_path, "nanonis", hours=HOURS)
    finally:
        nanonis.served.close()
        nanonis.ioc.stop()
    twin = rig(start_ioc(seed=seed), tiled_server)
    try:
        twin_session, twin_summary = run_session(twin, tmp_path, "twin", hours=HOURS)
    finally:
        twin.served.close()

    assert summary["images"] >= 30 and summary["episodes"] >= 1
    # Every image the simulator produced is in Tiled, as the IOC served it.
    truth = sim.truth()
    stored = session_images(nanonis.client, session)
    assert truth["frame_count"] == len(stored) == summary["images"]
    assert len(nanonis.served.frames) == len(stored)
    for image, frame in zip(stored, nanonis.served.frames, strict=True):
        np.testing.assert_array_equal(image, frame[: 64 * 64].reshape(64, 64))
    assert truth["action_count"] == summary["actions"]
    # The same session as over the direct twin IOC with the same seed.
    assert {k: summary[k] for k in COUNTS} == {k: twin_summary[k] for k in COUNTS}
    assert summary["elapsed_hours"] == pytest.approx(twin_summary["elapsed_hours"], rel=1e-5)
    twin_stored = session_images(twin.client, twin_session)
    np.testing.assert_allclose(np.stack(stored), np.stack(twin_stored), rtol=0, atol=1e-12)


@pytest.mark.timeout(600)
def test_simulator_killed_mid_session_pauses_and_resumes_the_session(start_sim, _ioc_launcher,
                                                                     tiled_server, tmp_path):
    seed = 35
    sim = start_sim(seed)
    ioc = launch_nanonis_ioc(_ioc_launcher, sim)
    r = rig(ioc, tiled_server)
    reached = threading.Event()
    r.RE.subscribe(lambda name, doc: reached.set() if len(r.served.frames) >= 25 else None,
                   "event")
    outage: dict[str, object] = {}

    def kill_and_restart() -> None:
        reached.wait(300)
        os.kill(sim.process.pid, signal.SIGKILL)
        sim.process.wait()
        time.sleep(3.0)
        start_sim(seed, "--port", str(sim.port), "--truth-port", str(sim.truth_port))
        while "answers again" not in ioc.log():
            time.sleep(0.02)
        # A fresh observer: the first one may reconnect later than the session resumes.
        outage["observer"] = ServedFrames(ioc)

    killer = threading.Thread(target=kill_and_restart, daemon=True)
    killer.start()
    try:
        session, summary = run_session(r, tmp_path, "outage", images=60)
    finally:
        killer.join(60)
        r.served.close()
        ioc.stop()
    assert "observer" in outage, "the simulator was never killed"
    observer = outage["observer"]
    assert isinstance(observer, ServedFrames)
    observer.close()

    # The session paused for the lost controller as for a lost IOC, and finished.
    runs = list(runs_by_session(r.client, session).values())
    assert [f.kind for run in runs for f in StoredRun(run).faults()] == ["ioc_disconnect"]
    assert all(run.metadata["stop"]["exit_status"] == "success" for run in runs)
    assert summary["images"] >= 60
    # Every stored image was served by the IOC, none twice; at most the frame in flight at
    # the kill is missing from Tiled.
    stored = [image.astype(np.float32).tobytes() for image in session_images(r.client, session)]
    # Both observers reconnect by themselves after the restart, and either may do so after
    # the session has resumed (a suite run's fresh observer missed 16 frames): a frame that
    # either one saw was served.
    frames = r.served.frames + observer.frames
    served = {frame[: 64 * 64].astype(np.float32).tobytes() for frame in frames}
    assert len(stored) == len(set(stored)) == summary["images"]
    assert set(stored) <= served and len(served) - len(stored) <= 1
    assert "lost: PVs disconnected" in ioc.log()


def test_survey_runs_unchanged_over_the_simulator(start_sim, _ioc_launcher, RE, docs):
    sim = start_sim(2)
    ioc = launch_nanonis_ioc(_ioc_launcher, sim)
    try:
        with init_devices():
            stm = STM(ioc.prefix, name="stm", sim=True)
        RE(survey(stm, 5))
    finally:
        ioc.stop()
    events = primary_events(docs)
    assert len(events) == 5 == sim.truth()["frame_count"]
    images = [np.asarray(event["data"]["stm-scan-image"]) for event in events]
    assert all(image.shape == (64, 64) for image in images)
    assert len({image.tobytes() for image in images}) == 5  # five places, five frames
