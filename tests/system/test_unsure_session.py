"""Abstention in a live session: the IOC subprocess, the shipped assessor with its unsure
calibration, a RunEngine writing to Tiled.

The assessor judges every frame with a dense atomic lattice laid over it (a surface the
twin never shows) until the test lifts it: the real network and its real calibration decide
what is unsure; nothing here sets a verdict.
"""

from __future__ import annotations

import uuid

import bluesky.plan_stubs as bps
import numpy as np
import pytest
from bluesky.utils import RunEngineInterrupted

from spm_bluesky import schema
from spm_bluesky.autonomy.rules import SessionState, Verdict
from spm_bluesky.ml.agent.policies import HeuristicPolicy
from spm_bluesky.ml.assessor import load_assessor
from spm_bluesky.plans.autonomous import autonomous_session
from spm_bluesky.protocols import GOOD, Assessment
from spm_bluesky.report.reader import load_session
from spm_bluesky.report.session import yield_figures
from spm_bluesky.storage import StoredRun, runs_by_session
from tests.system.test_autonomous_ioc import make_rig

pytestmark = pytest.mark.integration

UNSURE_LIMIT = 3
BAD_LIMIT = 2
#: Pauses before the test lifts the lattice.
FOREIGN_PAUSES = 2


def lattice(image: np.ndarray, size: float, amplitude: float = 0.6e-10,
            period: float = 0.5e-9) -> np.ndarray:
    """``image`` with a hexagonal lattice of ``period`` (m) and ``amplitude`` (m) added."""
    x = np.arange(image.shape[0]) * size / image.shape[0]
    xx, yy = np.meshgrid(x, x)
    k = 2 * np.pi / period
    waves = sum(np.cos(k * (xx * np.cos(a) + yy * np.sin(a))) for a in (0, np.pi / 3,
                                                                          2 * np.pi / 3))
    return image + amplitude * waves


class ForeignSurface:
    """The shipped assessor, shown each frame with a lattice on it while ``foreign``."""

    def __init__(self) -> None:
        self.assessor = load_assessor()
        self.foreign = True
        self.judged: list[Assessment] = []

    @property
    def model_id(self) -> str:
        return self.assessor.model_id

    def assess(self, image_m: np.ndarray, scan_size_m: float) -> Assessment:
        shown = lattice(image_m, scan_size_m) if self.foreign else image_m
        assessment = self.assessor.assess(shown, scan_size_m)
        self.judged.append(assessment)
        return assessment


def decisions(docs: list[tuple[str, dict]]) -> tuple[list[str], list[str]]:
    """The verdicts of the decision events so far, and the plan names of the runs started."""
    streams = {d["uid"]: d.get("name") for n, d in docs if n == "descriptor"}
    verdicts = [d["data"][schema.DECISION_VERDICT] for n, d in docs
                if n == "event" and streams.get(d["descriptor"]) == schema.DECISION]
    plans = [d[schema.PLAN_NAME] for n, d in docs if n == "start"]
    return verdicts, plans


def truths(docs: list[tuple[str, dict]]) -> list[str]:
    """The twin's true tip class at each image so far."""
    return [d["data"][schema.SIM_TIP_STATE] for n, d in docs
            if n == "event" and schema.SIM_TIP_STATE in d["data"]]


def test_unsure_images_never_condition_and_a_run_of_them_pauses(start_ioc, tiled_server):
    rig = make_rig(start_ioc, tiled_server, seed=5)
    rig.RE(bps.trigger(rig.stm.sim.degrade, wait=True))
    docs: list[tuple[str, dict]] = []
    rig.RE.subscribe(lambda name, doc: docs.append((name, doc)))
    assessor = ForeignSurface()
    assert assessor.assessor.abstains, "the shipped networks have no unsure calibration"
    session = f"unsure-{uuid.uuid4().hex[:8]}"
    plan = autonomous_session(rig.stm, assessor, HeuristicPolicy(), images=30,
                              session_uid=session, bad_limit=BAD_LIMIT,
                              unsure_limit=UNSURE_LIMIT, run_images=50)
    pauses, verdicts_at_pause = 0, []
    try:
        rig.RE(plan)
    except RunEngineInterrupted:
        pauses += 1
    while rig.RE.state == "paused":
        verdicts_at_pause.append(decisions(docs)[0])
        if pauses == 1:  # UNSURE_LIMIT > BAD_LIMIT images it called bad, yet no conditioning
            # More than BAD_LIMIT images of a truly bad tip, yet no conditioning.
            verdicts, plans = decisions(docs)
            assert plans == [schema.AUTONOMOUS_SCAN] and verdicts.count("unsure") > BAD_LIMIT
            assert GOOD not in truths(docs)
        if pauses >= FOREIGN_PAUSES:
            assessor.foreign = False
        try:
            summary = rig.RE.resume().plan_result
        except RunEngineInterrupted:
            pauses += 1

    # Each pause came right after UNSURE_LIMIT unsure images in a row (counted since the
    # last sure image or pause), and resuming went on: the session took all its images.
    assert pauses >= FOREIGN_PAUSES
    replay, expected_pauses = SessionState(session), []
    verdicts, _ = decisions(docs)
    for index, verdict in enumerate(verdicts):
        if replay.count_unsure(Verdict(verdict), UNSURE_LIMIT):
            expected_pauses.append(index + 1)
    assert [len(v) for v in verdicts_at_pause] == expected_pauses
    assert summary["images"] >= 30 and summary["unsure_images"] == verdicts.count("unsure")

    # The verdict is unsure exactly when the assessor was (the frame was not debris); an
    # unsure image leaves the count of bad images as it was, and every conditioning episode
    # followed a sure bad image that took that count over the limit.
    for assessment, verdict in zip(assessor.judged, verdicts, strict=False):
        if verdict != Verdict.DEBRIS:
            assert (verdict == Verdict.UNSURE) == assessment.unsure
    last: dict | None = None
    for name, doc in docs:
        if name == "event" and schema.DECISION_VERDICT in doc["data"]:
            data = doc["data"]
            if data[schema.DECISION_VERDICT] == Verdict.UNSURE and last is not None:
                assert data[schema.DECISION_CONSECUTIVE_BAD] == last[
                    schema.DECISION_CONSECUTIVE_BAD]
            last = data
        elif name == "start" and doc[schema.PLAN_NAME] == schema.CONDITION_TIP:
            assert last is not None and last[schema.DECISION_VERDICT] == Verdict.BAD
            assert last[schema.DECISION_CONSECUTIVE_BAD] > BAD_LIMIT

    # The documents in Tiled hold the verdicts and the scores; the report shows them.
    stored = [StoredRun(run) for run in runs_by_session(rig.client, session).values()]
    scans = [run for run in stored if run.plan_name == schema.AUTONOMOUS_SCAN]
    stored_verdicts = [d.verdict for run in scans for d in run.decisions()]
    assert stored_verdicts == verdicts
    judged = [(bool(data[schema.ASSESSMENT_UNSURE]), float(data[schema.ASSESSMENT_UNSURE_SCORE]))
              for run in scans for _, data in run.rows(schema.ASSESSMENT)]
    flags, stored_scores = zip(*judged, strict=True)  # as the shipped assessor judges a score
    assert list(flags) == assessor.assessor.is_unsure(np.array(stored_scores)).tolist()
    scores = [score for (_, score), verdict in zip(judged, stored_verdicts, strict=True)
              if verdict == Verdict.UNSURE]
    assert len(scores) == verdicts.count("unsure")
    assert assessor.assessor.is_unsure(np.array(scores)).all()
    figures = yield_figures(load_session(rig.client, session))
    assert sorted(figures.unsure_scores) == pytest.approx(sorted(scores))
    assert any(label.startswith("unsure images") for label, _ in figures.rows())


def test_an_episode_unsure_of_its_frames_acts_on_none_and_pauses_the_session(start_ioc,
                                                                            tiled_server):
    rig = make_rig(start_ioc, tiled_server, seed=5)
    rig.RE(bps.trigger(rig.stm.sim.degrade, wait=True))
    docs: list[tuple[str, dict]] = []
    assessor = ForeignSurface()
    assessor.foreign = False

    def watch(name: str, doc: dict) -> None:
        docs.append((name, doc))
        # The surface turns foreign as the first conditioning episode starts.
        if name == "start" and doc[schema.PLAN_NAME] == schema.CONDITION_TIP and not any(
                n == "start" and d[schema.PLAN_NAME] == schema.CONDITION_TIP
                for n, d in docs[:-1]):
            assessor.foreign = True

    rig.RE.subscribe(watch)
    session = f"unsure-episode-{uuid.uuid4().hex[:8]}"
    # Short episodes: after the resume the tip is still bad, and the session goes on.
    plan = autonomous_session(rig.stm, assessor, HeuristicPolicy(), images=12,
                              session_uid=session, bad_limit=BAD_LIMIT,
                              unsure_limit=UNSURE_LIMIT, run_images=50, max_actions=3)
    with pytest.raises(RunEngineInterrupted):
        rig.RE(plan)
    assert rig.RE.state == "paused"
    # The episode took UNSURE_LIMIT frames, was unsure of each and acted on none; the
    # session did not give up on the area either.
    streams = {d["uid"]: d["name"] for n, d in docs if n == "descriptor"}
    episode_uid = next(d["uid"] for n, d in docs
                       if n == "start" and d[schema.PLAN_NAME] == schema.CONDITION_TIP)
    runs = {d["uid"]: d["run_start"] for n, d in docs if n == "descriptor"}
    in_episode = [streams[d["descriptor"]] for n, d in docs
                  if n == "event" and runs[d["descriptor"]] == episode_uid]
    assert in_episode.count(schema.ACTION) == 0
    judged = [d["data"][schema.ASSESSMENT_UNSURE] for n, d in docs
              if n == "event" and runs[d["descriptor"]] == episode_uid
              and streams[d["descriptor"]] == schema.ASSESSMENT]
    assert judged == [True] * UNSURE_LIMIT
    assert decisions(docs)[1] == [schema.AUTONOMOUS_SCAN, schema.CONDITION_TIP]

    # Resumed (the surface familiar again), the session scans on in the same area.
    assessor.foreign = False
    summary = rig.RE.resume().plan_result
    assert summary["images"] >= 12
    plans = decisions(docs)[1]
    assert plans[2] == schema.AUTONOMOUS_SCAN, plans

