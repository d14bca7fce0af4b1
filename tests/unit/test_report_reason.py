"""Why the loop decided: each verdict's reason from stored data, the yield counted per
reason, and the best images ranked by something that tells them apart."""

from __future__ import annotations

import math

import pytest

from spm_bluesky.report.session import (
    CONDITIONING,
    IMPORTED,
    ConditioningEpisode,
    ImageRecord,
    SessionData,
    best_images,
    best_score,
    shown_episodes,
    verdict_reason,
    yield_figures,
)


def record(verdict: str, seq_num: int = 1, **fields) -> ImageRecord:
    base = dict(run_uid="run-a", seq_num=seq_num, clock=100.0 * seq_num, area=0, x=0.0,
                y=0.0, size=10e-9, p_good=0.7, verdict=verdict)
    return ImageRecord(**{**base, **fields})


@pytest.mark.parametrize(("fields", "expected"), [
    (dict(verdict="kept", tip_belief=0.973, keep_threshold=0.5),
     "kept: P(tip good) 0.97 > 0.5"),
    (dict(verdict="bad", tip_belief=0.12, keep_threshold=0.5, p_good=0.9),
     "bad tip: P(tip good) 0.12 <= 0.5"),
    # a session recorded before the filter decided on the image's own p(good)
    (dict(verdict="kept", p_good=0.95, keep_threshold=0.9), "kept: p(good) 0.95 > 0.9"),
    (dict(verdict="debris", p_good=0.99, peak_to_peak=3.1e-9, debris_threshold=0.6e-9),
     "debris: height range 3.10 nm > 0.6 nm"),
    (dict(verdict="debris"), "debris: height range over the debris threshold (range not "
                             "stored)"),
    (dict(verdict="crash"), "crash: flat image at full retraction"),
    (dict(verdict="lost_contact"), "lost contact: flat image at full extension"),
    (dict(verdict="unsure", unsure_score=412.4),
     "unsure: the assessor did not know the image, out-of-distribution score 412; not "
     "acted on"),
    (dict(verdict=CONDITIONING, p_good=0.25),
     "conditioning episode image: p(good) 0.25, no verdict"),
    (dict(verdict=IMPORTED), "imported file: no loop decided about it"),
])
def test_every_verdict_says_why_from_the_stored_values(fields, expected):
    assert verdict_reason(record(**fields)) == expected


def test_a_debris_image_with_a_high_p_good_is_explained_by_its_height_range():
    reason = verdict_reason(record("debris", p_good=0.99, peak_to_peak=0.8e-9,
                                   debris_threshold=0.6e-9))
    assert reason.startswith("debris") and "0.80 nm > 0.6 nm" in reason
    assert "p(good)" not in reason


def session(images, episodes=()) -> SessionData:
    data = SessionData("s", {"autonomy": {"keep_threshold": 0.5}}, images=list(images),
                       episodes=list(episodes))
    data.end_clock = max((r.clock for r in data.images), default=0.0)
    return data


def test_the_yield_counts_every_rejection_reason_apart_and_adds_up():
    verdicts = ["kept"] * 5 + ["bad"] * 3 + ["debris"] * 4 + ["crash"] + \
        ["lost_contact"] * 2 + ["unsure"] * 2 + [CONDITIONING] * 6
    data = session(record(v, i, unsure_score=10.0 * i) for i, v in enumerate(verdicts, 1))
    figures = yield_figures(data)
    assert (figures.good_images, figures.bad_images, figures.debris_images,
            figures.crash_images, figures.lost_contact_images, len(figures.unsure_scores),
            figures.conditioning_images) == tuple(verdicts.count(v) for v in (
                "kept", "bad", "debris", "crash", "lost_contact", "unsure", CONDITIONING))
    rows = dict(figures.rows())
    counted = [rows[label] for label in rows if label.startswith("rejected:")]
    assert len(counted) == 4  # bad tip, debris, crash, lost contact: each its own row
    assert int(rows["images"]) == len(verdicts) == (
        figures.good_images + sum(int(n) for n in counted) + len(figures.unsure_scores)
        + figures.conditioning_images)


def test_best_images_are_separated_clean_and_in_time_order():
    p_goods = [0.99, 0.999, 0.9999, 0.99999, 0.9, 0.999999, 0.95, 0.9995, 0.99995, 0.9999]
    kept = [record("kept", i, p_good=p, peak_to_peak=0.15e-9, debris_threshold=0.6e-9)
            for i, p in enumerate(p_goods, 1)]
    # the surest of all, but a blob just under the debris threshold: never "best"
    blob = record("kept", 20, p_good=0.9999999, peak_to_peak=0.55e-9,
                  debris_threshold=0.6e-9)
    rejected = record("debris", 21, p_good=0.9999999, peak_to_peak=2e-9,
                      debris_threshold=0.6e-9)
    data = session([*kept, blob, rejected])
    best = best_images(data, count=4)
    assert blob not in best and rejected not in best
    assert [r.clock for r in best] == sorted(r.clock for r in best)
    scores = sorted((best_score(r) for r in kept), reverse=True)
    assert sorted((best_score(r) for r in best), reverse=True) == scores[:4]
    # p(good) to two places reads 1.00 for all four; the rank still separates them
    assert {f"{r.p_good:.2f}" for r in best} == {"1.00"}
    assert len({round(best_score(r), 1) for r in best}) == 4


def test_best_score_is_finite_for_a_p_good_that_rounds_to_one():
    assert math.isfinite(best_score(record("kept", p_good=1.0)))
    assert best_score(record("kept", p_good=1.0)) > best_score(record("kept", p_good=0.9999))


def test_shown_episodes_spread_over_the_session():
    episodes = [ConditioningEpisode(float(i), i + 0.5, i % 2 == 0) for i in range(20)]
    data = session([], episodes)
    shown = shown_episodes(data, count=6)
    assert len(shown) == 6 and shown[0] is episodes[0] and shown[-1] is episodes[-1]
    assert [e.start for e in shown] == sorted(e.start for e in shown)
    assert shown_episodes(session([], episodes[:3])) == episodes[:3]
