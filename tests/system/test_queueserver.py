"""The same startup directory under the queueserver: queue plans through the API (0MQ), run
them, and find their runs in Tiled: a survey, and an autonomous session whose assessor and
policy are named by string.

Needs Redis at 127.0.0.1:6379 (the project's machines and CI run one); the manager gets its
own Redis key prefix, deleted afterwards, and its own 0MQ ports.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from bluesky_queueserver_api import BPlan
from bluesky_queueserver_api.zmq import REManagerAPI

from spm_bluesky import schema
from spm_bluesky.ml.card import GATE, read_card
from spm_bluesky.services.epics_env import free_port
from spm_bluesky.storage import SessionReader, connect, read_image_stream
from tests.session_helpers import PROFILE_DIR, REPO, clean_env, services_up

pytestmark = pytest.mark.integration

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
STARTUP_DIR = PROFILE_DIR / "startup"


def _redis() -> redis.Redis:
    client = redis.Redis(REDIS_HOST, REDIS_PORT, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as err:
        pytest.skip(f"the queueserver needs Redis at {REDIS_HOST}:{REDIS_PORT}: {err}")
    return client


class Manager:
    """A `start-re-manager` process on the profile's startup directory, and its API client."""

    def __init__(self, tmp_path: Path, data_dir: str, redis_prefix: str) -> None:
        control, info = free_port(), free_port()
        self.log_path = tmp_path / "re-manager.log"
        command = [
            # The script installed beside this interpreter, whether or not the venv is active.
            str(Path(sys.executable).with_name("start-re-manager")),
            "--startup-dir", str(STARTUP_DIR),
            # Written when the environment opens: keep it out of the source tree.
            "--existing-plans-devices", str(tmp_path / "existing_plans_and_devices.yaml"),
            "--redis-addr", f"{REDIS_HOST}:{REDIS_PORT}", "--redis-name-prefix", redis_prefix,
            "--zmq-control-addr", f"tcp://127.0.0.1:{control}",
            "--zmq-info-addr", f"tcp://127.0.0.1:{info}", "--zmq-publish-console", "OFF",
        ]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                env=clean_env(SPM_BLUESKY_HOME=data_dir))
        self.api = REManagerAPI(zmq_control_addr=f"tcp://127.0.0.1:{control}",
                                timeout_recv=10.0)

    def wait_started(self, timeout: float = 60) -> None:
        """Wait until the manager answers status requests and is idle."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"start-re-manager exited:\n{self.log()}"
            try:
                if self.api.status()["manager_state"] == "idle":
                    return
            except self.api.RequestTimeoutError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"start-re-manager did not answer within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        """The end of the manager's output (worker output included), for failure messages."""
        return self.log_path.read_text(errors="replace")[-6000:]

    def stop(self) -> None:
        """Close the environment, stop the manager, and make sure its process is gone."""
        try:
            if self.process.poll() is None:
                self.api.send_request(method="manager_stop", params={"option": "safe_off"})
                self.process.wait(30)
        except Exception:  # a failed test may leave it in any state: end it by its PID
            self.process.kill()
            self.process.wait(30)
        finally:
            self.api.close()


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[tuple[Manager, dict[str, Any]]]:
    """Services from `spm-bluesky up` and a RE Manager on profile_collection/startup."""
    client = _redis()
    prefix = f"spm_test_{uuid.uuid4().hex[:12]}"
    with services_up(tmp_path / "spm-data") as state:
        manager = Manager(tmp_path, state["data_dir"], prefix)
        try:
            yield manager, state
        finally:
            manager.stop()
            keys = list(client.scan_iter(f"{prefix}*"))
            if keys:
                client.delete(*keys)
            client.close()


def test_survey_queued_through_the_queueserver_lands_in_tiled(
    manager: tuple[Manager, dict[str, Any]],
) -> None:
    qs, state = manager
    api = qs.api
    qs.wait_started()
    api.environment_open()
    api.wait_for_idle(timeout=120)
    assert api.status()["worker_environment_exists"], qs.log()

    plans = api.plans_allowed()["plans_allowed"]
    assert {"acquire_image", "survey", "tip_action", "approach", "move_area",
            "autonomous_session"} <= set(plans)
    assert "stm" in api.devices_allowed()["devices_allowed"]

    api.item_add(BPlan("survey", "stm", 3))
    api.queue_start()
    api.wait_for_idle(timeout=120)
    result = api.history_get()["items"][-1]["result"]
    assert result["exit_status"] == "completed", result.get("traceback") or qs.log()
    (uid,) = result["run_uids"]

    run = connect(state["tiled_uri"], state["api_key"])[uid]
    start = run.metadata["start"]
    assert start["plan_name"] == "survey" and start["plan_args"]["n_images"] == 3
    stack = read_image_stream(run, "stm-scan-image")
    assert stack.images.shape == (3, 64, 64) and stack.units == "m"

    api.environment_close()
    api.wait_for_idle(timeout=60)
    assert not api.status()["worker_environment_exists"]


#: The autonomous session's image budget and its scan runs' size: several runs, quickly.
SESSION_IMAGES, RUN_IMAGES = 12, 5


def test_autonomous_session_queued_by_name_lands_in_tiled(
    manager: tuple[Manager, dict[str, Any]],
) -> None:
    qs, state = manager
    api = qs.api
    qs.wait_started()
    api.environment_open()
    api.wait_for_idle(timeout=120)
    assert api.status()["worker_environment_exists"], qs.log()

    session = f"qs-{uuid.uuid4().hex[:12]}"
    api.item_add(BPlan("autonomous_session", "stm", assessor="shipped", policy="heuristic",
                       images=SESSION_IMAGES, run_images=RUN_IMAGES, session_uid=session))
    api.queue_start()
    api.wait_for_idle(timeout=600)
    result = api.history_get()["items"][-1]["result"]
    assert result["exit_status"] == "completed", result.get("traceback") or qs.log()

    runs = list(SessionReader(connect(state["tiled_uri"], state["api_key"]), session))
    assert {run.uid for run in runs} == set(result["run_uids"])
    names = [run.plan_name for run in runs]
    scans = [run for run in runs if run.plan_name == schema.AUTONOMOUS_SCAN]
    assert len(scans) >= SESSION_IMAGES // RUN_IMAGES, names
    imaging = [run for run in runs if run.plan_name in schema.IMAGE_PLANS]
    images = sum(len(run.frames()) for run in imaging)
    assert images >= SESSION_IMAGES, names
    # Every frame is assessed; every frame of a scan run gets a verdict, numbered in the
    # session's count of images (conditioning frames included).
    assert sum(len(run.assessments()) for run in imaging) == images
    decisions = [d for run in scans for d in run.decisions()]
    assert len(decisions) == sum(len(run.frames()) for run in scans)
    numbers = [d.image for d in decisions]
    assert numbers == sorted(set(numbers)) and numbers[-1] <= images
    for run in runs:
        assert run.model_ids[schema.MODEL_POLICY] == "heuristic", run.plan_name
        assert run.model_ids[schema.MODEL_ASSESSOR] == read_card(GATE)["model_id"]  # shipped
