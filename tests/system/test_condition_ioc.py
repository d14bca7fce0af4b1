"""condition_tip for real: a degraded tip in the IOC subprocess, the shipped agent and
assessor, a RunEngine writing through TiledWriter to a Tiled server; the episode rebuilt
from Tiled alone."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import uuid

import bluesky.plan_stubs as bps
import numpy as np
import pytest
from bluesky import RunEngine
from ophyd_async.core import init_devices

from spm_bluesky.devices.stm import STM
from spm_bluesky.domain.actions import ACTIONS, action_mask
from spm_bluesky.domain.processing import largest_empty_square, prepare
from spm_bluesky.ml.agent.dqn import DQNConfig, load_agent
from spm_bluesky.ml.agent.from_tiled import transitions_from_run
from spm_bluesky.ml.agent.online import OnlineAgent
from spm_bluesky.ml.assessor import load_assessor
from spm_bluesky.plans.episode import condition_tip
from spm_bluesky.storage import connect, feed_documents, read_image_stream, subscribe_writer

pytestmark = pytest.mark.integration


def stream_rows(docs: list[tuple[str, dict]], name: str) -> dict[str, list]:
    """Every field of a stream's events, in event order, from replayed documents."""
    descriptors = {d["uid"] for n, d in docs if n == "descriptor" and d["name"] == name}
    events = sorted((d for n, d in docs if n == "event" and d["descriptor"] in descriptors),
                    key=lambda d: d["seq_num"])
    return {key: [e["data"][key] for e in events] for key in (events[0]["data"] if events
                                                              else {})}


def test_condition_tip_repairs_a_degraded_tip_and_tiled_holds_every_decision(
    start_ioc, tiled_server, tmp_path
):
    ioc = start_ioc(seed=11)
    RE = RunEngine(call_returns_result=True)
    client = connect(tiled_server.uri, tiled_server.api_key)
    subscribe_writer(RE, client)
    with init_devices():
        stm = STM(ioc.prefix, name="stm", sim=True)
    RE(bps.trigger(stm.sim.degrade, wait=True))
    assert RE(bps.rd(stm.sim.tip_state)).plan_result != "good"

    agent, assessor = load_agent(), load_assessor()
    session = f"condition-{uuid.uuid4().hex[:8]}"
    result = RE(condition_tip(stm, agent, assessor, mask_path=str(tmp_path / "mask.json"),
                              session_uid=session))
    outcome = result.plan_result
    (uid,) = result.run_start_uids
    assert outcome["success"] and 1 <= outcome["actions"] <= 100
    # The truth PV: the tip really is good now.
    assert RE(bps.rd(stm.sim.tip_state)).plan_result == "good"

    # Rebuild the episode from Tiled alone.
    run = connect(tiled_server.uri, tiled_server.api_key)[uid]
    start = run.metadata["start"]
    assert start["plan_name"] == "condition_tip" and start["session_uid"] == session
    assert start["model_ids"] == {"assessor": assessor.model_id, "policy": agent.model_id}
    assert run.metadata["stop"]["exit_status"] == "success"
    n = outcome["actions"]
    images = read_image_stream(run, "stm-scan-image").images
    docs: list[tuple[str, dict]] = []
    feed_documents(run, lambda name, doc: docs.append((name, doc)))
    judged = stream_rows(docs, "assessment")
    steps = stream_rows(docs, "action")
    truth = stream_rows(docs, "truth")
    assert images.shape == (n + 1, 64, 64)
    assert len(judged["assessment-p_good"]) == n + 1 == len(truth["stm-sim-tip_state"])
    assert steps["decision-step"] == list(range(1, n + 1))
    p_good = judged["assessment-p_good"]
    assert all(p <= 0.9 for p in p_good[:-1]) and p_good[-1] > 0.9
    assert truth["stm-sim-tip_state"][0] != "good" and truth["stm-sim-tip_state"][-1] == "good"
    for i in range(n):
        # The image before step i+1 decides the mask; the action is one the mask allowed,
        # applied where it was written to the IOC, and the policy's values are recorded.
        mask = np.asarray(steps["decision-mask"][i], dtype=bool)
        free, _ = largest_empty_square(images[i].astype(np.float64), 10e-9)
        assert math.isclose(steps["decision-free_square"][i], free)
        assert list(mask) == action_mask(free)
        index = steps["decision-action_index"][i]
        assert mask[index] and steps["decision-action"][i] == ACTIONS[index].name
        values = np.asarray(steps["decision-values"][i], dtype=float)
        assert np.all(np.isfinite(values[mask])) and np.all(np.isnan(values[~mask]))
        assert index == int(np.nanargmax(values))
        assert steps["decision-spot_x"][i] == steps["stm-tip-action_x"][i] or \
            ACTIONS[index].kind == "stall"
    assert steps["stm-tip-action_counter"][-1] >= sum(
        ACTIONS[i].kind != "stall" for i in steps["decision-action_index"])

    # The replay buffer rebuilt from Tiled holds the same steps the plan took.
    transitions = transitions_from_run(run)
    assert [t.action for t in transitions] == steps["decision-action_index"]
    assert [t.reward for t in transitions] == [-1.0] * (n - 1) + [9.0]
    assert [t.terminated for t in transitions] == [False] * (n - 1) + [True]
    for i, t in enumerate(transitions):
        np.testing.assert_array_equal(t.observation["image"],
                                      prepare(images[i].astype(np.float64), 10e-9)[0])
        np.testing.assert_array_equal(t.observation["action_mask"], steps["decision-mask"][i])
        assert t.observation["probabilities"][0] == pytest.approx(p_good[i])
        np.testing.assert_array_equal(t.next_observation["image"],
                                      transitions[i + 1].observation["image"]
                                      if i + 1 < n else
                                      prepare(images[n].astype(np.float64), 10e-9)[0])

    # ... and `train agent --from-tiled` learns from it.
    out = tmp_path / "from_tiled.pt"
    done = subprocess.run(
        [sys.executable, "-m", "spm_bluesky", "train", "agent", "--from-tiled",
         tiled_server.uri, "--session", session, "--updates", "20", "--eval-episodes", "3",
         "--out", str(out)],
        env={**os.environ, "SPM_TILED_API_KEY": tiled_server.api_key},
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{n} transitions from {tiled_server.uri}; 20 updates" in done.stdout
    card = json.loads(out.with_name("from_tiled.card.json").read_text())
    assert card["training"]["data"].startswith(f"{n} stored transitions")
    assert load_agent(out).model_id == card["model_id"] != agent.model_id


def test_online_agent_learns_during_a_live_episode(start_ioc, tmp_path):
    """condition_tip with a learning policy: every step and the outcome reach its learner."""
    ioc = start_ioc(seed=23)
    RE = RunEngine(call_returns_result=True)
    with init_devices():
        stm = STM(ioc.prefix, name="stm", sim=True)
    RE(bps.trigger(stm.sim.degrade, wait=True))
    online = OnlineAgent(load_agent(), DQNConfig(learning_starts=4),
                         save_to=tmp_path / "live.pt")
    outcome = RE(condition_tip(stm, online, load_assessor())).plan_result
    assert outcome["actions"] >= 1 and online.transitions == outcome["actions"]
    replay = online.learner.replay
    assert replay.size == 4 * outcome["actions"]
    assert replay.done[:replay.size].sum() == 4 * int(outcome["success"])
    assert online.learner.updates == outcome["actions"]
    assert load_agent(tmp_path / "live.pt").model_id != load_agent().model_id
