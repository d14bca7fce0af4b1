"""Tiled down mid-session, for real: the session (``spm-bluesky run``, its own process) goes
on while Tiled is killed; ``spm-bluesky up`` brings Tiled back alone on the same port with
the same key; at the end Tiled holds every image the IOC served, by content, none twice.

The outage lasts ``SPM_OUTAGE_S`` seconds (default 45, past the 36 s that once ended a
session; the soak runs 600). During it the IOC paces the twin (``Sim:TimeScale``, about 0.3 s
a frame): the session still scans well over the 50 frames the test asks of the outage,
without spending a core on frames nobody needs."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import psutil
import pytest

from spm_bluesky.services.launch import UpOptions, client_ca_env, down, environ_set, up
from spm_bluesky.storage import connect, runs_by_session
from tests.ca_sync import write
from tests.session_helpers import spm, wait_until
from tests.system.test_chain import ServedFrames
from tests.system.test_recovery import run_cli, session_images, session_of

pytestmark = pytest.mark.integration

OUTAGE_S = float(os.environ.get("SPM_OUTAGE_S", "45"))
#: ``Sim:TimeScale`` during the outage: a 64-pixel frame of 16 simulated seconds waits 0.3 s.
OUTAGE_TIME_SCALE = 0.02


class _Ioc:
    """What :class:`ServedFrames` needs of an IOC: its PV names."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def pv(self, name: str) -> str:
        return self.prefix + name


def _set_time_scale(state, value: float) -> None:
    """Write the IOC's ``Sim:TimeScale`` (0: as fast as possible)."""
    with environ_set(client_ca_env(state.epics_env)):
        write(state.prefix + "Sim:TimeScale", value, notify=True)


@pytest.mark.slow
@pytest.mark.timeout(OUTAGE_S + 300)
def test_session_outlives_a_tiled_outage_and_tiled_gets_every_image(tmp_path):
    data_dir = tmp_path / "data"
    state, _ = up(UpOptions(data_dir=data_dir, seed=43))
    try:
        with environ_set(client_ca_env(state.epics_env)):
            served = ServedFrames(_Ioc(state.prefix))
        log = tmp_path / "run.log"
        session_process = run_cli("--images", "1000000", "--run-images", "100",
                                  data_dir=data_dir, log=log)
        session = session_of(log, session_process)
        wait_until(lambda: len(served.frames) >= 100, 120, "100 frames", poll=0.2)

        # Tiled dies (SIGKILL, no goodbye); the session keeps scanning through the outage.
        _set_time_scale(state, OUTAGE_TIME_SCALE)
        tiled = psutil.Process(state.tiled.pid)
        tiled_children = tiled.children(recursive=True)
        for proc in [tiled, *tiled_children]:
            proc.send_signal(signal.SIGKILL)
        tiled.wait(10)
        killed_at, at_kill = time.monotonic(), len(served.frames)
        status = spm("status", "--data-dir", data_dir)  # during the outage
        assert status.returncode == 1 and "down: tiled;" in status.stdout
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - killed_at)))
        assert session_process.poll() is None, log.read_text()
        during = len(served.frames) - at_kill
        assert during >= 50, f"only {during} frames were served during the outage"

        # `up` starts Tiled alone, on its port, with its key; the IOC is left as it is.
        _set_time_scale(state, 0.0)  # as `up` started it: `up` names any option that differs
        restarted = spm("up", "--data-dir", data_dir)
        assert restarted.returncode == 0, restarted.stderr
        after = spm("status", "--data-dir", data_dir)
        assert after.returncode == 0, after.stdout
        client = connect(state.tiled_uri, state.api_key)  # the same address and key
        restarted_at = len(served.frames)
        wait_until(lambda: len(served.frames) >= restarted_at + 20, 60,
                   "frames after the restart", poll=0.2)
        session_process.send_signal(signal.SIGINT)  # stop: pause, close the run, store all
        assert session_process.wait(240) == 130, log.read_text()
        served.close()
        out = log.read_text()
        assert "Tiled does not take documents" in out and "Tiled answers again" in out
        assert "Traceback" not in out

        runs = list(runs_by_session(client, session).values())
        assert all("stop" in run.metadata for run in runs)
        stored = [image.astype(np.float32).tobytes() for image in session_images(client, session)]
        digests = [frame[: 64 * 64].astype(np.float32).tobytes() for frame in served.frames]
        assert len(set(stored)) == len(stored), "an image is stored twice"
        assert set(stored) <= set(digests), "Tiled holds an image the IOC did not serve"
        # Every image served is stored, but for the frame in flight when Ctrl-C came.
        assert len(digests) - len(stored) <= 1, (len(digests), len(stored))
        assert len(stored) > at_kill + during // 2
    finally:
        down(data_dir)
