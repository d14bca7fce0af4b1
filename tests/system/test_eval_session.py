"""``spm-bluesky eval session``: four systems, each on a fresh IOC with the same twin seed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from spm_bluesky.domain.actions import ACTIONS, ACTIONS_BY_NAME
from spm_bluesky.evaluation.session import SessionEval, SystemResult
from spm_bluesky.evaluation.system import System, build_system, check_agent
from spm_bluesky.evaluation.twin_pvs import DegradeSchedule
from spm_bluesky.ml.agent.policies import MissingAgentError, OracleAssessor, policy_by_name
from spm_bluesky.ml.card import WEIGHTS_DIR
from spm_bluesky.schema import SCAN_CLOCK as FRAME_CLOCK_KEY
from tests.ca_sync import read

HOURS = 0.2
SEED = 3
#: Seconds a Channel Access read of the IOC may take (search included).
CA_TIMEOUT_S = 20
KEYS = {"good_per_hour", "images", "good_images", "conditioning_episodes", "actions",
        "crashes"}


def test_oracle_reads_the_truth_and_respects_the_mask():
    truth = iter(["good", "blunt", "multi_apex", "multi_apex"])
    assessor = OracleAssessor(lambda: next(truth))
    assert assessor.assess(np.zeros((8, 8)), 1e-8).p_good == 1.0
    judged = assessor.assess(np.zeros((8, 8)), 1e-8)
    assert judged.p_good == 0.0 and judged.label == "blunt"
    policy = policy_by_name("oracle", truth=lambda: next(truth))
    everything = np.ones(len(ACTIONS), dtype=bool)
    best = policy.act({}, everything)
    only_stall = np.zeros(len(ACTIONS), dtype=bool)
    only_stall[ACTIONS.index(ACTIONS_BY_NAME["stall"])] = True
    assert ACTIONS[best.action].kind.value == "dip"  # multi_apex: a dip repairs it best
    assert ACTIONS[policy.act({}, only_stall).action].name == "stall"


def test_json_has_exactly_the_issue_shape():
    result = SystemResult(good_per_hour=10.0, images=5, good_images=2,
                          conditioning_episodes=1, actions=3, crashes=0, hours=0.2,
                          wall_s=1.0)
    doc = SessionEval(0.2, 1, {"oracle": result}).to_json()
    assert doc == {"hours": 0.2, "seed": 1, "systems": {"oracle": {
        "good_per_hour": 10.0, "images": 5, "good_images": 2, "conditioning_episodes": 1,
        "actions": 3, "crashes": 0}}}


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EPICS_")}
    return subprocess.run([sys.executable, "-m", "spm_bluesky", "eval", "session", *args],
                          capture_output=True, text=True, timeout=600, env=env)


def test_full_system_without_agent_weights_fails_clearly(tmp_path):
    missing = tmp_path / "agent.pt"
    with pytest.raises(MissingAgentError, match="train agent"):
        check_agent(missing)
    with pytest.raises(MissingAgentError, match="--systems"):
        build_system(System.FULL, None, 0, agent_path=missing)
    done = run_cli("--hours", "0.1", "--systems", "full", "--agent", str(missing))
    assert done.returncode == 1
    assert "no weight file" in done.stderr and "--systems" in done.stderr


@pytest.mark.integration
def test_four_systems_on_the_same_twin(tmp_path):
    systems = [s.value for s in System]
    if not (WEIGHTS_DIR / "agent.pt").is_file():  # never substitute: leave 'full' out
        systems.remove("full")
    out = tmp_path / "eval.json"
    done = run_cli("--hours", str(HOURS), "--seed", str(SEED), "--degraded-start",
                   "--systems", ",".join(systems), "--json", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["hours"] == HOURS and doc["seed"] == SEED
    assert list(doc["systems"]) == systems
    for name, figures in doc["systems"].items():
        assert set(figures) == KEYS, name
        assert 0 <= figures["good_images"] <= figures["images"]
        assert figures["images"] > 0
        # The session ends at the first activity boundary after HOURS of instrument time.
        assert figures["good_per_hour"] <= figures["good_images"] / HOURS + 1e-9
        assert figures["conditioning_episodes"] >= 1  # the tip started degraded
        assert figures["actions"] >= figures["conditioning_episodes"]
        assert f"| {name} | {figures['good_per_hour']:.1f} | {figures['images']} |" \
            in done.stdout
    # Knowing the truth beats guessing (on this seed; short sessions are noisy, so the
    # heuristic, which may repair as fast as the oracle here, is not compared).
    oracle, random = doc["systems"]["oracle"], doc["systems"]["random"]
    assert oracle["good_images"] >= random["good_images"]
    assert oracle["actions"] <= random["actions"]


@pytest.mark.integration
def test_the_degradation_schedule_degrades_the_real_twin_on_time(start_ioc):
    ioc = start_ioc(seed=SEED)
    tip_state = ioc.pv("Sim:TipState")

    def state() -> bytes:
        """The twin's true tip state (caproto's 1 s default runs out on a loaded machine)."""
        return read(tip_state, timeout=CA_TIMEOUT_S).data[0]

    assert state() == b"good"
    schedule = DegradeSchedule(ioc.prefix, every_hours=0.01)  # every 36 s
    try:
        for clock in (100.0, 120.0, 135.9):  # counts from the first frame's clock
            schedule("event", {"data": {FRAME_CLOCK_KEY: clock}})
        schedule("descriptor", {"data": {FRAME_CLOCK_KEY: 500.0}})  # only events count
        assert schedule.forced == 0
        schedule("event", {"data": {FRAME_CLOCK_KEY: 136.0}})
        schedule("event", {"data": {FRAME_CLOCK_KEY: 150.0}})
        assert schedule.forced == 1
        deadline = time.monotonic() + 10
        while state() == b"good" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert state() != b"good"
        schedule("event", {"data": {FRAME_CLOCK_KEY: 172.0}})
        assert schedule.forced == 2
    finally:
        schedule.close()
