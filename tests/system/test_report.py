"""The session report and replay, from a real session: IOC subprocess -> RunEngine ->
session writer -> Tiled server -> report built from Tiled alone."""

from __future__ import annotations

import re
import struct
import uuid
from pathlib import Path

import bluesky.plan_stubs as bps
import numpy as np
import pytest
from bluesky import RunEngine
from ophyd_async.core import init_devices

from spm_bluesky.autonomy.writer import session_writer
from spm_bluesky.devices.stm import STM
from spm_bluesky.domain.actions import ACTIONS, ACTIONS_BY_NAME
from spm_bluesky.evaluation.twin_pvs import TruthReader
from spm_bluesky.ml.agent.policies import policy_by_name
from spm_bluesky.ml.assessor.assessor import load_assessor
from spm_bluesky.plans.autonomous import autonomous_session
from spm_bluesky.protocols import CLASSES, Assessment, Decision, Policy
from spm_bluesky.report import (
    PART_TITLES,
    SessionNotFound,
    best_images,
    build_report,
    fetch_images,
    load_session,
    overview_figure,
    reassess_session,
    verdict_reason,
    yield_figures,
)
from spm_bluesky.storage import connect, feed_documents, runs_by_session

pytestmark = pytest.mark.integration

HOURS = 0.35
MAX_ACTIONS = 3


class StallFirst:
    """Stalls through the first episode (which then fails: the loop moves to a fresh area),
    then acts as the oracle (which repairs the tip, so later images are kept)."""

    name = "stall-then-oracle"

    def __init__(self, oracle: Policy) -> None:
        self.oracle, self.episodes = oracle, 0

    def reset(self, seed: int | None = None) -> None:
        self.episodes += 1

    def act(self, observation: dict, mask: np.ndarray) -> Decision:
        if self.episodes == 1:
            return Decision(ACTIONS.index(ACTIONS_BY_NAME["stall"]))
        return self.oracle.act(observation, mask)


class SessionRecord:
    """A real session stored in Tiled: its uid, the plan's own summary, the server."""

    def __init__(self, uid: str, summary: dict, uri: str, api_key: str) -> None:
        self.uid, self.summary, self.uri, self.api_key = uid, summary, uri, api_key

    def client(self):
        return connect(self.uri, self.api_key)


@pytest.fixture(scope="module")
def session(_ioc_launcher, tiled_server) -> SessionRecord:
    """A quarter of a simulated hour from a degraded tip, stored through the session writer."""
    ioc = _ioc_launcher.start(seed=5)
    try:
        RE = RunEngine(call_returns_result=True)
        RE.subscribe(session_writer(connect(tiled_server.uri, tiled_server.api_key)))
        with init_devices():
            stm = STM(ioc.prefix, name="stm", sim=True)
        RE(bps.trigger(stm.sim.degrade, wait=True))
        uid = f"report-{uuid.uuid4().hex[:8]}"
        truth = TruthReader(ioc.prefix)
        policy = StallFirst(policy_by_name("oracle", truth=truth))
        result = RE(autonomous_session(stm, load_assessor(), policy, hours=HOURS,
                                       session_uid=uid, max_actions=MAX_ACTIONS))
        truth.close()
    finally:
        ioc.stop()
    return SessionRecord(uid, result.plan_result, tiled_server.uri, tiled_server.api_key)


@pytest.fixture(scope="module")
def stored(session):
    """The session as the report reads it, and counts made independently from documents."""
    client = session.client()
    return load_session(client, session.uid), independent_counts(client, session.uid)


def independent_counts(client, uid: str) -> dict[str, int]:
    """Counts from the runs' documents (``feed_documents``), not from the report's table reader."""
    counts = dict(images=0, kept=0, actions=0, episodes=0, area_moves=0, runs=0, bad=0,
                  debris=0, crash=0, lost_contact=0, unsure=0)
    for run in runs_by_session(client, uid).values():
        counts["runs"] += 1
        plan = run.metadata["start"]["plan_name"]
        counts["episodes"] += plan == "condition_tip"
        counts["area_moves"] += plan == "move_area"
        streams: dict[str, str] = {}

        def count(name: str, doc: dict, streams=streams) -> None:
            if name == "descriptor":
                streams[doc["uid"]] = doc["name"]
            elif name == "event":
                stream = streams[doc["descriptor"]]
                counts["images"] += "stm-scan-image" in doc["data"]
                if stream == "decision":
                    counts[doc["data"]["decision-verdict"]] += 1
                counts["actions"] += stream == "action"

        feed_documents(run, count)
    return counts


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def test_session_data_match_the_documents_and_the_plans_counters(session, stored):
    data, counts = stored
    figures = yield_figures(data)
    # The session did what the test needs: a failed episode, a move, two areas, kept images.
    assert counts["episodes"] >= 2 and counts["actions"] >= 2 and counts["area_moves"] >= 1
    assert counts["kept"] >= 3
    assert len(data.areas) >= 2
    assert figures.images == counts["images"] == session.summary["images"]
    assert figures.good_images == counts["kept"] == session.summary["good_images"]
    assert figures.actions == counts["actions"] == session.summary["actions"]
    assert figures.conditioning_episodes == counts["episodes"] == session.summary["episodes"]
    assert figures.area_moves == counts["area_moves"]
    assert figures.crashes == session.summary["crashes"]
    assert figures.simulated_hours == pytest.approx(session.summary["elapsed_hours"], rel=1e-6)
    assert figures.good_per_hour == pytest.approx(figures.good_images / figures.simulated_hours)
    # Every image has its place, p(good) and the twin's truth; every judged image its
    # P(tip good), above the threshold exactly for the kept ones.
    keep = data.metadata["autonomy"]["keep_threshold"]
    assert all(r.truth in CLASSES for r in data.images)
    judged = [r for r in data.images if r.verdict in ("kept", "bad")]
    assert judged and all(0.0 < r.tip_belief < 1.0 for r in judged)
    assert all((r.tip_belief > keep) == r.kept for r in judged)
    assert figures.truly_good_images == sum(r.kept and r.truth == "good" for r in data.images)
    assert all(np.isfinite([r.x, r.y, r.p_good, r.clock]).all() for r in data.images)


def test_overview_figure_has_every_part(session, stored):
    data, _ = stored
    images = fetch_images(session.client(), best_images(data))
    assert 1 <= len(images) <= 8
    assert all(image.shape == (64, 64) for _, image in images)
    fig = overview_figure(data, images)
    titles = [ax.get_title() for ax in fig.get_axes()]
    for area in data.areas:
        panel = [t for t in titles if t.startswith(f"approach area {area}:")]
        assert len(panel) == 1
        n = sum(r.area == area for r in data.images)
        assert f"{n} images" in panel[0]
    assert any(t.startswith("What decided kept or bad: the P(tip good), filtered")
               for t in titles)
    assert "true tip class on the twin" in titles
    assert "yield" in titles
    assert sum("log-odds" in t and "true" in t for t in titles) == len(images)
    title = fig._suptitle.get_text()
    assert data.session_uid in title and f"twin seed {data.twin_seed}" in title
    assert f"policy {data.model_ids['policy']}" in title and data.first_time[:10] in title


def test_each_episode_has_its_first_and_last_image_and_every_image_a_reason(stored):
    data, counts = stored
    assert len(data.episodes) == counts["episodes"]
    for episode in data.episodes:
        assert episode.before is not None and episode.before.verdict == "conditioning"
        assert episode.before.clock == episode.start
        if episode.after is not None:
            assert episode.after.run_uid == episode.before.run_uid
            assert episode.after.seq_num > episode.before.seq_num
    keep = data.metadata["autonomy"]["keep_threshold"]
    for record in data.images:
        reason = verdict_reason(record)
        if record.kept:
            assert reason == f"kept: P(tip good) {record.tip_belief:.2f} > {keep:g}"
        elif record.verdict == "debris":
            assert record.peak_to_peak > data.metadata["autonomy"]["debris_threshold"]
            assert reason.startswith("debris: height range")


def test_report_files_png_and_self_contained_html(session, stored, tmp_path):
    files = build_report(session.client(), session.uid, tmp_path)
    _, counts = stored
    width, height = png_size(files.png)
    assert width >= 1200 and height >= 1000

    page = files.html.read_text()
    for part, title in PART_TITLES.items():
        assert f'<section id="{part}">' in page and title in page
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(embedded) == 4  # map, timeline, gallery, episodes
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing external
    assert "http://" not in page and "https://" not in page

    def figure(key: str) -> str:
        match = re.search(rf'data-key="{key}">([^<]*)<', page)
        assert match, key
        return match.group(1)

    assert int(figure("images")) == counts["images"]
    assert int(figure("good_images")) == counts["kept"]
    assert int(figure("conditioning_actions")) == counts["actions"]
    for verdict in ("bad_tip", "debris", "crash", "lost_contact"):
        assert int(figure(f"rejected_{verdict}")) == counts[verdict.removesuffix("_tip")]
    assert int(figure("conditioning_episodes")) == counts["episodes"]
    assert int(figure("area_moves")) == counts["area_moves"]
    assert float(figure("good_images_per_simulated_hour")) == pytest.approx(
        counts["kept"] / session.summary["elapsed_hours"], abs=0.05)


def test_unknown_session_says_how_to_find_sessions(session):
    with pytest.raises(SessionNotFound, match="--list"):
        load_session(session.client(), "no-such-session")


class Pessimist:
    """An assessor that never sees a good tip."""

    model_id = "pessimist"

    def assess(self, image_m: np.ndarray, scan_size_m: float) -> Assessment:
        return Assessment({c: float(c == "blunt") for c in CLASSES}, self.model_id)


def test_replay_with_a_pessimist_rejects_every_kept_image(session):
    other = reassess_session(session.client(), session.uid, Pessimist())
    stats = other.summary()
    assert stats["kept_stored"] == session.summary["good_images"] > 0
    assert stats["kept_new"] == 0 and stats["kept_to_rejected"] == stats["kept_stored"]
    assert stats["conditioning_new"] == stats["images"] // (other.bad_limit + 1)
    table = other.table()
    assert "| kept | " in table and "pessimist" in table and "-> bad" in table


def test_report_list_and_replay_commands(session, capsys, monkeypatch):
    """``replay`` with the model the session used: every verdict stays."""
    from spm_bluesky.commandline.main import main
    from spm_bluesky.ml.card import WEIGHTS

    monkeypatch.setenv("SPM_TILED_API_KEY", session.api_key)  # never on the command line
    where = ["--tiled-uri", session.uri]
    assert main(["report", "--list", *where]) == 0
    assert session.uid in capsys.readouterr().out
    assert main(["report", "no-such-session", *where]) == 1
    assert "--list" in capsys.readouterr().err
    assert main(["replay", session.uid, "--assessor", str(WEIGHTS), *where]) == 0
    out = capsys.readouterr().out
    assert "0 images kept would be rejected, 0 rejected would be kept" in out
    kept = session.summary["good_images"]
    assert re.search(rf"\| kept \| {kept} \| {kept} \|", out)
