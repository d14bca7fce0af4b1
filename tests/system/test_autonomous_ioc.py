"""autonomous_session for real: the IOC subprocess with a degraded tip, the shipped assessor,
a scripted policy, a RunEngine writing to a Tiled server; decisions and images checked
against what the IOC served, and the state rebuilt from Tiled."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import bluesky.plan_stubs as bps
import numpy as np
import pytest
from bluesky import RunEngine
from ophyd_async.core import init_devices

from spm_bluesky.autonomy.rules import UNKNOWN_TIP, SessionConfig, update_belief
from spm_bluesky.autonomy.state import rebuild
from spm_bluesky.autonomy.writer import session_writer
from spm_bluesky.devices.stm import STM
from spm_bluesky.ml.agent.policies import HeuristicPolicy
from spm_bluesky.ml.assessor import load_assessor
from spm_bluesky.plans.autonomous import autonomous_session
from spm_bluesky.storage import StoredRun, connect, read_image_stream, runs_by_session
from tests.fixtures_ioc import IocProcess
from tests.system.test_chain import ServedFrames

pytestmark = pytest.mark.integration

IMAGE_KEY = "stm-scan-image"
BAD_LIMIT = 3


def stored_frames(client, session: str) -> tuple[list, np.ndarray]:
    """The session's runs (oldest first) and every image they hold, in order."""
    runs = list(runs_by_session(client, session).values())
    images = [read_image_stream(run, IMAGE_KEY).images for run in runs
              if run.metadata["start"]["plan_name"] in ("autonomous_scan", "condition_tip")]
    return runs, np.concatenate(images)


@dataclass
class Rig:
    """A fresh IOC watched by an independent CA client, a RunEngine writing to Tiled."""

    ioc: IocProcess
    served: ServedFrames
    RE: RunEngine
    client: Any
    stm: STM


def make_rig(start_ioc, tiled_server, seed: int) -> Rig:
    """The parts of a live session test (see :class:`Rig`)."""
    ioc = start_ioc(seed=seed)
    served = ServedFrames(ioc)
    RE = RunEngine(call_returns_result=True)
    client = connect(tiled_server.uri, tiled_server.api_key)
    RE.subscribe(session_writer(client))
    with init_devices():
        stm = STM(ioc.prefix, name="stm", sim=True)
    return Rig(ioc, served, RE, client, stm)


def test_session_decides_repairs_and_stores_every_served_image(start_ioc, tiled_server,
                                                               tmp_path):
    rig = make_rig(start_ioc, tiled_server, seed=21)
    served, RE, client, stm = rig.served, rig.RE, rig.client, rig.stm
    RE(bps.trigger(stm.sim.degrade, wait=True))
    session = f"auto-{uuid.uuid4().hex[:8]}"
    assessor = load_assessor()

    summary = RE(autonomous_session(stm, assessor, HeuristicPolicy(), images=120,
                                    session_uid=session, bad_limit=BAD_LIMIT, run_images=30,
                                    mask_path=str(tmp_path / "mask.json"))).plan_result
    frame_counter = RE(bps.rd(stm.scan.frame_counter)).plan_result
    served.close()

    # The session took its images (a conditioning episode may run past the limit).
    assert summary["session_uid"] == session
    assert summary["images"] >= 120 and summary["images"] == frame_counter
    assert summary["episodes"] >= 1 and summary["actions"] >= 1

    # Every image the IOC served is in Tiled, in order, with identical content.
    runs, images = stored_frames(client, session)
    assert len(images) == frame_counter == len(served.frames)
    for stored, frame in zip(images, served.frames, strict=True):
        np.testing.assert_array_equal(stored, frame[: 64 * 64].reshape(64, 64))

    # Every run carries the session and its provenance, and finished.
    names = [run.metadata["start"]["plan_name"] for run in runs]
    assert {"autonomous_scan", "condition_tip"} <= set(names)
    for run in runs:
        start = run.metadata["start"]
        assert start["session_uid"] == session and start["twin_seed"] == 21
        assert start["model_ids"]["assessor"] == assessor.model_id
        assert start["model_ids"]["policy"] == "heuristic"
        assert start["autonomy"]["images"] == 120 and start["autonomy"]["bad_limit"] == BAD_LIMIT
        assert run.metadata["stop"]["exit_status"] == "success"
    assert [run.metadata["start"]["autonomy_run"] for run in runs] == list(range(len(runs)))

    # Decisions follow from the stored assessments through the P(tip good) filter (unknown
    # at the start and after each conditioning episode); bad streaks trigger conditioning.
    config = SessionConfig.from_md(runs[0].metadata["start"]["autonomy"])
    belief = UNKNOWN_TIP
    for i, run in enumerate(runs):
        if names[i] == "condition_tip":
            belief = UNKNOWN_TIP
        if names[i] != "autonomous_scan":
            continue
        stored = StoredRun(run)
        judged, decided, truth = stored.assessments(), stored.decisions(), stored.truths()
        assert len(judged) == len(decided) == len(truth) == len(read_image_stream(
            run, IMAGE_KEY).images)
        for p_good, verdict, recorded in zip([a.p_good for a in judged],
                                             [d.verdict for d in decided],
                                             [d.tip_belief for d in decided], strict=True):
            if verdict in ("kept", "bad"):
                belief = update_belief(belief, p_good, config)
                assert (verdict == "kept") == (belief > config.keep_threshold)
            elif verdict == "crash":
                belief = UNKNOWN_TIP
            assert recorded == pytest.approx(belief)
        assert max(d.consecutive_bad for d in decided) <= BAD_LIMIT + 1
        if decided[-1].consecutive_bad > BAD_LIMIT:
            assert names[i + 1] == "condition_tip"
            assert runs[i + 1].metadata["start"]["reason"] == "consecutive_bad"

    # No place scanned twice.
    centres = [(frame.x, frame.y) for run in runs
               if run.metadata["start"]["plan_name"] in ("autonomous_scan", "condition_tip")
               for frame in StoredRun(run).frames()]
    assert len(centres) == len(set(centres)) == frame_counter

    # Tiled alone gives back the session's state.
    state = rebuild(client, session)
    assert state.summary() == summary
