"""SIGKILL of a session (``spm-bluesky run``) during a conditioning episode and during the
approach after a crash, each followed by ``run --resume``: what the killed process did is
durable (the journal), so after each resume no frame lands inside a used disc or a crash
zone, the counters are right and no run is left open. And a crash while an episode acts:
the session records it (a durable mark, a ``fault`` event, the disc blocked), approaches
again and goes on to its end."""

from __future__ import annotations

import math
import signal
import time

import pytest

from spm_bluesky import schema
from spm_bluesky.autonomy.state import CRASH_MARK, rebuild
from spm_bluesky.services.launch import UpOptions, client_ca_env, down, environ_set, up
from spm_bluesky.storage import Disc, FrameRecord, connect, runs_by_session
from spm_bluesky.storage.journal import journal_dir, read_marks
from spm_bluesky.storage.journal_runs import JournalRun, journal_runs
from tests.ca_sync import write
from tests.system.test_recovery import run_cli, session_of

pytestmark = pytest.mark.integration

CRASH_RADIUS = 150e-9

#: Seconds a Channel Access write may wait for the IOC's reply: caproto's 2 s ran out while
#: the suite loaded both cores.
CA_TIMEOUT_S = 20.0


def _leg(run: JournalRun) -> int:
    return int(run.metadata[schema.AUTONOMY]["resumed"])


def _journal_until(journal, session, process, log, condition,
                   timeout: float) -> list[JournalRun] | None:
    """The session's journal runs once ``condition`` holds for them; None after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        runs = journal_runs(journal, session)
        if condition(runs):
            return runs
        assert process.poll() is None, log.read_text()
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.5)


def _wait_journal(journal, session, process, log, condition, timeout=180.0) -> list[JournalRun]:
    runs = _journal_until(journal, session, process, log, condition, timeout)
    assert runs is not None, "timed out"
    return runs


def _episode_acting(runs: list[JournalRun]) -> bool:
    return any(r.plan_name == schema.CONDITION_TIP and r.steps() and r.stop is None
               for r in runs)


def _wear_until_an_episode_acts(prefix: str, journal, session, process, log,
                                tries: int = 4, each_s: float = 60.0) -> None:
    """Degrade the tip until a conditioning episode acts. A drawn defect can be one the
    frames do not show where the session scans (a double tip over bare terrace gives good
    frames; seen in a suite run: 160 frames kept in 180 s), so the tip is worn again."""
    for _ in range(tries):
        write(prefix + "Sim:Degrade", 1, notify=True, timeout=CA_TIMEOUT_S)
        if _journal_until(journal, session, process, log, _episode_acting, each_s):
            return
    pytest.fail(f"no conditioning episode acted after {tries} degraded tips")


def _frames(runs: list[JournalRun]) -> list[FrameRecord]:
    """The frames of the image runs (coarse runs' primary streams hold status, not frames)."""
    return [f for run in runs if run.plan_name in schema.IMAGE_PLANS for f in run.frames()]


def _discs(runs: list[JournalRun], size: float) -> list[Disc]:
    """Every disc the image runs used: frames (size / 2 around each) and action spots."""
    images = [run for run in runs if run.plan_name in schema.IMAGE_PLANS]  # not coarse runs
    discs = [Disc(f.area, f.x, f.y, size / 2) for run in images for f in run.frames()]
    discs += [step.disc() for run in images for step in run.steps()]
    return discs


def _inside(area: int, x: float, y: float, discs: list[Disc]) -> list[Disc]:
    return [d for d in discs if d.area == area and math.hypot(x - d.x, y - d.y) < d.radius]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_kills_during_conditioning_and_after_a_crash_lose_no_safety_record(tmp_path):
    data_dir = tmp_path / "data"
    state, _ = up(UpOptions(data_dir=data_dir, seed=47, console=False))
    journal = journal_dir(data_dir)
    try:
        client = connect(state.tiled_uri, state.api_key)
        # Leg 0: condition after 2 bad images in a row; SIGKILL once an episode has acted.
        first = run_cli("--images", "100000", "--bad-limit", "2", data_dir=data_dir,
                        log=tmp_path / "first.log")
        session = session_of(tmp_path / "first.log", first)
        with environ_set(client_ca_env(state.epics_env)):
            _wear_until_an_episode_acts(state.prefix, journal, session, first,
                                        tmp_path / "first.log")
        first.send_signal(signal.SIGKILL)
        first.wait(30)
        leg0 = journal_runs(journal, session)
        # A resumed leg prunes journal segments that Tiled holds whole: keep what each leg saw.
        seen = {r.uid: r for r in leg0}
        episode = next(r for r in leg0 if r.plan_name == schema.CONDITION_TIP and r.stop is None)
        size = float(leg0[0].metadata[schema.AUTONOMY]["size"])
        state0 = rebuild(client, session, journal=journal)
        assert state0.episodes >= 1 and state0.actions >= len(episode.steps()) >= 1

        # Leg 1: resume; a crash; SIGKILL as soon as the crash is marked (the approach).
        # No conditioning in this leg (--bad-limit 1000): a dip may crash by itself, and this
        # leg counts exactly one crash (a crash during an episode: the test below).
        second = run_cli("--images", "100000", "--bad-limit", "1000", "--resume", session,
                         data_dir=data_dir, log=tmp_path / "second.log")
        assert session_of(tmp_path / "second.log", second) == session
        _wait_journal(journal, session, second, tmp_path / "second.log", lambda runs: sum(
            len(_frames([r])) for r in runs if _leg(r) == 1) >= 10)
        with environ_set(client_ca_env(state.epics_env)):
            write(state.prefix + "Sim:Fault", "crash", notify=True, timeout=CA_TIMEOUT_S)
        deadline = time.monotonic() + 60
        while not read_marks(journal, CRASH_MARK):
            assert second.poll() is None, (tmp_path / "second.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no crash mark in the journal after 60 s"
            time.sleep(0.05)
        second.send_signal(signal.SIGKILL)
        second.wait(30)
        (crash,) = read_marks(journal, CRASH_MARK)
        state1 = rebuild(client, session, journal=journal)
        assert state1.crashes == 1
        seen |= {r.uid: r for r in journal_runs(journal, session)}
        assert state1.episodes == state0.episodes + sum(
            1 for r in seen.values() if _leg(r) == 1 and r.plan_name == schema.CONDITION_TIP)

        # Leg 2: resume to 40 more images; it must avoid every used disc and the crash zone.
        target = state1.images + 40
        third = run_cli("--images", str(target), "--bad-limit", "1000", "--resume", session,
                        data_dir=data_dir, log=tmp_path / "third.log")
        assert third.wait(300) == 0, (tmp_path / "third.log").read_text()
        out = (tmp_path / "third.log").read_text()
        assert f"images={target}" in out and "crashes=1" in out

        seen |= {r.uid: r for r in journal_runs(journal, session)}
        runs = list(seen.values())
        old = [r for r in runs if _leg(r) < 2]
        new = [r for r in runs if _leg(r) == 2]
        used = _discs(old, size)
        zone = Disc(int(crash.body["area"]), crash.body["x"], crash.body["y"], CRASH_RADIUS)
        assert crash.body["radius"] == pytest.approx(CRASH_RADIUS)
        new_frames = _frames(new)
        assert len(new_frames) == 40
        for frame in new_frames:
            assert not _inside(frame.area, frame.x, frame.y, used), frame
            assert not _inside(frame.area, frame.x, frame.y, [zone]), frame
        for step in (s for r in new for s in r.steps()):
            assert not _inside(step.area, step.x, step.y, [zone]), step

        # Tiled holds every run, closed: the two killed runs as aborted.
        stored = list(runs_by_session(client, session).values())
        assert {r.metadata["start"]["uid"] for r in stored} == {r.uid for r in runs}
        assert all("stop" in r.metadata for r in stored)
        aborted = [r for r in stored if r.metadata["stop"]["exit_status"] == "abort"]
        assert len(aborted) == 2
        final = rebuild(client, session, journal=journal)
        assert final.crashes == 1 and final.images == target
    finally:
        down(data_dir)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_crash_while_an_episode_acts_is_handled_like_any_crash(tmp_path):
    data_dir = tmp_path / "data"
    state, _ = up(UpOptions(data_dir=data_dir, seed=53, console=False))
    journal = journal_dir(data_dir)
    log = tmp_path / "session.log"
    try:
        client = connect(state.tiled_uri, state.api_key)
        process = run_cli("--images", "100000", "--bad-limit", "2", data_dir=data_dir, log=log)
        session = session_of(log, process)
        # An episode can end between seeing it act and the crash landing: then the crash
        # is a scan's, and the tip is worn again for another episode (at most three tries).
        crash = None
        for _ in range(3):
            marked = len(read_marks(journal, CRASH_MARK))
            with environ_set(client_ca_env(state.epics_env)):
                _wear_until_an_episode_acts(state.prefix, journal, session, process, log)
                write(state.prefix + "Sim:Fault", "crash", notify=True, timeout=CA_TIMEOUT_S)
            _wait_journal(journal, session, process, log, lambda runs, marked=marked:
                          len(read_marks(journal, CRASH_MARK)) > marked)
            mark = read_marks(journal, CRASH_MARK)[marked]
            done = len(_frames(journal_runs(journal, session)))
            runs = _wait_journal(journal, session, process, log, lambda runs, done=done:
                                 len(_frames(runs)) >= done + 3)  # its event is in by then
            if any(f.kind == "crash" and f.crash_count == mark.body["crash_count"]
                   for r in runs if r.plan_name == schema.CONDITION_TIP for f in r.faults()):
                crash = mark
                break
        assert crash is not None, "no crash landed inside an episode in three tries"
        # The session goes on: 15 more frames after the crash, then Ctrl-C ends it cleanly.
        done = len(_frames(runs))
        runs = _wait_journal(journal, session, process, log,
                             lambda runs: len(_frames(runs)) >= done + 15)
        process.send_signal(signal.SIGINT)
        assert process.wait(60) == 130, log.read_text()[-3000:]
        runs = journal_runs(journal, session)
        # Every crash (the injected one; a dip may crash too) has its mark and its event.
        marks = read_marks(journal, CRASH_MARK)
        crashes = [f for r in runs for f in r.faults() if f.kind == "crash"]
        assert [(f.x, f.y, f.crash_count) for f in crashes] == [
            (m.body["x"], m.body["y"], m.body["crash_count"]) for m in marks]
        first = next(f for f in crashes if f.crash_count == crash.body["crash_count"])
        episode = next(r for r in runs if r.uid == first.run_uid)
        assert episode.plan_name == schema.CONDITION_TIP
        zone = Disc(int(crash.body["area"]), crash.body["x"], crash.body["y"], CRASH_RADIUS)
        after = [f for f in _frames(runs) if f.clock > first.clock]
        assert len(after) >= 15
        assert not [f for f in after if _inside(f.area, f.x, f.y, [zone])]
        judged = sum(d.verdict == "crash" for r in runs for d in r.decisions())
        assert rebuild(client, session, journal=journal).crashes == len(marks) + judged
    finally:
        down(data_dir)
