"""Recovery of an autonomous session, for real: (a) the IOC is killed mid-session and started
again on its ports, and the session pauses and resumes by itself; (b) the tip loses contact
and crashes (``Sim:Fault``), and the contact suspender approaches again; (c) the session's
Python process (``spm-bluesky run``) is stopped with Ctrl-C, then killed, and the session is
resumed from the journal and Tiled each time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import numpy as np
import pytest

from spm_bluesky.autonomy.state import rebuild
from spm_bluesky.ml.agent.policies import HeuristicPolicy
from spm_bluesky.ml.assessor import load_assessor
from spm_bluesky.plans.autonomous import autonomous_session
from spm_bluesky.services.launch import UpOptions, down, up
from spm_bluesky.storage import StoredRun, connect, read_image_stream, runs_by_session
from spm_bluesky.storage.journal import journal_dir
from spm_bluesky.storage.journal_runs import journal_runs
from tests.ca_sync import write
from tests.system.test_autonomous_ioc import make_rig
from tests.system.test_chain import ServedFrames

pytestmark = pytest.mark.integration

IMAGE_KEY = "stm-scan-image"


def session_images(client, session: str) -> list[np.ndarray]:
    """Every image of the session in Tiled (last take of each seq_num), in order."""
    images: list[np.ndarray] = []
    for run in runs_by_session(client, session).values():
        if run.metadata["start"]["plan_name"] in ("autonomous_scan", "condition_tip"):
            images.extend(read_image_stream(run, IMAGE_KEY).images)
    return images


@pytest.mark.timeout(300)
def test_ioc_killed_and_restarted_mid_session_pauses_and_resumes(start_ioc, restart_ioc,
                                                                 tiled_server, tmp_path):
    rig = make_rig(start_ioc, tiled_server, seed=31)
    ioc, served, RE, client, stm = rig.ioc, rig.served, rig.RE, rig.client, rig.stm
    frames_before_kill = 45
    reached = threading.Event()
    RE.subscribe(lambda name, doc: reached.set() if len(served.frames) >= frames_before_kill
                 else None, "event")
    outage: dict[str, object] = {}

    def kill_and_restart() -> None:
        reached.wait(120)
        os.kill(ioc.pid, signal.SIGKILL)
        ioc.process.wait()
        outage["served_before"] = len(served.frames)
        time.sleep(3.0)
        outage["new"] = new = restart_ioc(ioc, seed=31)
        # A fresh observer: the first one may reconnect later than the session resumes.
        outage["observer"] = ServedFrames(new)

    killer = threading.Thread(target=kill_and_restart, daemon=True)
    killer.start()
    session = f"recover-{uuid.uuid4().hex[:8]}"
    t0 = time.monotonic()
    summary = RE(autonomous_session(stm, load_assessor(), HeuristicPolicy(), images=100,
                                    session_uid=session, run_images=30,
                                    mask_path=str(tmp_path / "mask.json"))).plan_result
    killer.join(30)
    served.close()
    assert "new" in outage, "the IOC was never killed"
    observer = outage["observer"]
    observer.close()
    assert time.monotonic() - t0 > 3.0  # it waited for the IOC to come back

    # The outage is on record, in the run that was interrupted.
    runs = list(runs_by_session(client, session).values())
    faults = [fault for run in runs for fault in StoredRun(run).faults()]
    assert [f.kind for f in faults] == ["ioc_disconnect"]
    assert all(run.metadata["stop"]["exit_status"] == "success" for run in runs)

    # No image lost or duplicated: Tiled holds exactly the session's images, each one an
    # image the IOC served, none twice; at most the frame published at the instant of the
    # kill (never read) is missing from Tiled.
    stored = session_images(client, session)
    assert len(stored) == summary["images"] == 100
    frames = served.frames[: outage["served_before"]] + observer.frames
    digests = [frame[: 64 * 64].astype(np.float32).tobytes() for frame in frames]
    stored_digests = [image.astype(np.float32).tobytes() for image in stored]
    assert len(set(stored_digests)) == len(stored_digests)
    assert set(stored_digests) <= set(digests)
    assert len(digests) - len(stored_digests) <= 1

    # The rebuilt state agrees.
    assert rebuild(client, session).images == 100


def test_lost_contact_and_crash_suspend_the_session_and_are_recovered(start_ioc, tiled_server,
                                                                      tmp_path):
    rig = make_rig(start_ioc, tiled_server, seed=33)
    ioc, served, RE, client, stm = rig.ioc, rig.served, rig.RE, rig.client, rig.stm
    schedule = [(20, "lose_contact"), (50, "crash")]

    def inject(name: str, doc: dict) -> None:
        # Once enough frames were served, put the next fault from a thread (caproto's
        # client), as an outside event would come.
        if schedule and len(served.frames) >= schedule[0][0]:
            _, fault = schedule.pop(0)
            threading.Thread(target=write, args=(ioc.pv("Sim:Fault"), fault),
                             kwargs={"notify": True}, daemon=True).start()

    RE.subscribe(inject, "event")
    session = f"contact-{uuid.uuid4().hex[:8]}"
    summary = RE(autonomous_session(stm, load_assessor(), HeuristicPolicy(), images=80,
                                    session_uid=session, run_images=40,
                                    mask_path=str(tmp_path / "mask.json"))).plan_result
    served.close()
    # The crash damages the tip, so a conditioning episode may take the session past 80.
    assert summary["images"] >= 80 and summary["crashes"] == 1

    runs = list(runs_by_session(client, session).values())
    recorded = [fault for run in runs for fault in StoredRun(run).faults()]
    assert [f.kind for f in recorded] == ["lost_contact", "crash"]
    crash = recorded[1]
    assert crash.radius == pytest.approx(150e-9)
    state = rebuild(client, session)
    assert state.crashes == 1 and state.images == summary["images"]
    assert not state.mask.is_free(crash.x + 140e-9, crash.y)  # the crash disc
    # Every stored image was served, none twice; at most the frame in flight at each fault
    # (flat, taken again after the approach) is not stored.
    stored = [image.astype(np.float32).tobytes() for image in session_images(client, session)]
    digests = [frame[: 64 * 64].astype(np.float32).tobytes() for frame in served.frames]
    assert len(stored) == len(set(stored)) == summary["images"] and set(stored) <= set(digests)
    assert len(digests) - len(stored) <= 2


def run_cli(*args: str, data_dir, log) -> subprocess.Popen:
    """``spm-bluesky run`` in a subprocess with the services in ``data_dir``, output to
    the file ``log``."""
    command = [sys.executable, "-m", "spm_bluesky", "run", "--data-dir", str(data_dir),
               "--policy", "heuristic", "--run-images", "20", *args]
    with open(log, "w") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)


def session_of(log, process: subprocess.Popen, timeout: float = 120) -> str:
    """The session uid the command prints first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if line.startswith(("session ", "resuming ")):
                return line.split()[1]
        assert process.poll() is None, log.read_text()
        time.sleep(0.2)
    raise AssertionError(f"no session line in {log}")


def scanned_cells(runs) -> set[tuple[int, float, float]]:
    """(area, x, y) of every frame the runs hold."""
    cells = set()
    for run in runs:
        if run.metadata["start"]["plan_name"] in ("autonomous_scan", "condition_tip"):
            cells |= {(frame.area, frame.x, frame.y) for frame in StoredRun(run).frames()}
    return cells


def wait_for_runs(client, session: str, resumed: int, count: int,
                  process: subprocess.Popen, timeout: float = 180) -> None:
    """Wait until ``count`` runs of the session's ``resumed``-th leg have finished."""
    deadline = time.monotonic() + timeout
    while len([r for r in runs_by_session(client, session).values()
               if r.metadata.get("stop")
               and r.metadata["start"]["autonomy"]["resumed"] == resumed]) < count:
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)


@pytest.mark.slow
def test_stopped_and_killed_session_resumes_from_tiled_without_rescanning(tmp_path):
    data_dir = tmp_path / "data"
    state, _ = up(UpOptions(data_dir=data_dir, seed=41, console=False))
    try:
        client = connect(state.tiled_uri, state.api_key)
        # Ctrl-C: the session pauses at a checkpoint and closes its run; nothing is lost.
        first = run_cli("--images", "2000", data_dir=data_dir, log=tmp_path / "first.log")
        session = session_of(tmp_path / "first.log", first)
        wait_for_runs(client, session, 0, 2, first)
        first.send_signal(signal.SIGINT)
        assert first.wait(60) == 130, (tmp_path / "first.log").read_text()
        runs = list(runs_by_session(client, session).values())
        assert all(r.metadata["stop"]["exit_status"] == "success" for r in runs)
        stopped = rebuild(client, session)
        assert stopped.images == len(scanned_cells(runs)) >= 40

        # SIGKILL of the resumed process: every document it emitted is in the journal,
        # the run in flight included (Tiled may lag behind).
        second = run_cli("--images", "2000", "--resume", session, data_dir=data_dir,
                         log=tmp_path / "second.log")
        assert session_of(tmp_path / "second.log", second) == session
        wait_for_runs(client, session, 1, 2, second)
        second.send_signal(signal.SIGKILL)
        second.wait(30)
        journal = journal_dir(data_dir)
        journaled = journal_runs(journal, session)
        assert any(run.stop is None for run in journaled)  # the run in flight, left open
        used = {(f.area, f.x, f.y) for run in journaled for f in run.frames()}
        kept = rebuild(client, session, journal=journal)
        assert kept.images == len(used) >= stopped.images + 40

        # Resumed again from the journal and Tiled: it goes on where they say, never on a
        # used cell, and the run the kill left open is closed as aborted.
        third = run_cli("--images", str(kept.images + 60), "--resume", session,
                        data_dir=data_dir, log=tmp_path / "third.log")
        third.wait(300)
        out = (tmp_path / "third.log").read_text()
        assert third.returncode == 0, out
        assert f"resuming {session}" in out and f"images={kept.images + 60}" in out
        runs = list(runs_by_session(client, session).values())
        assert all("stop" in r.metadata for r in runs)  # no run left open
        aborted = [r for r in runs if r.metadata["stop"]["exit_status"] == "abort"]
        assert len(aborted) == 1 and "left open" in aborted[0].metadata["stop"]["reason"]
        assert scanned_cells(runs) >= used  # Tiled now holds what the kill cut off
        after = [r for r in runs if r.metadata["start"]["autonomy"]["resumed"] == 2]
        new_cells = scanned_cells(after)
        assert len(new_cells) == 60
        assert not new_cells & used  # no used cell scanned again
        assert min(r.metadata["start"]["autonomy_run"] for r in after) == kept.runs
    finally:
        down(data_dir)
