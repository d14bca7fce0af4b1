"""Intervals from resampling whole groups (the real set's frames)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from spm_bluesky.ml.assessor.bootstrap import by_group


def _mean_of(values: np.ndarray):
    return lambda rows: float(values[rows].mean())


def test_the_interval_is_seeded_and_holds_the_estimate():
    values = np.random.default_rng(0).normal(0.7, 0.1, 60)
    groups = [f"frame{i}" for i in range(60)]
    first = by_group(_mean_of(values), groups, seed=3)
    assert first == by_group(_mean_of(values), groups, seed=3)
    assert first != by_group(_mean_of(values), groups, seed=4)
    assert first.low < values.mean() < first.high
    # About +-1.96 standard errors of a mean of 60 values of spread 0.1.
    assert first.high - first.low == pytest.approx(2 * 1.96 * 0.1 / math.sqrt(60), rel=0.25)
    assert first.resamples == 2000 and "95% interval" in str(first)


def test_crops_of_one_frame_do_not_narrow_the_interval():
    # Each frame cut into five identical crops: resampled by frame, the interval is the one of
    # the frames alone; counting each crop as its own frame would make it far narrower.
    values = np.random.default_rng(1).normal(0.5, 0.2, 30)
    frames = [f"f{i}" for i in range(30)]
    alone = by_group(_mean_of(values), frames)
    crops = np.repeat(values, 5)
    by_frame = by_group(_mean_of(crops), np.repeat(frames, 5))
    by_crop = by_group(_mean_of(crops), [f"c{i}" for i in range(150)])
    assert by_frame.high - by_frame.low == pytest.approx(alone.high - alone.low, rel=0.15)
    assert by_crop.high - by_crop.low < 0.6 * (by_frame.high - by_frame.low)


def test_undefined_resamples_are_left_out_and_counted():
    values = np.r_[np.zeros(3), np.ones(3)]
    groups = list("aaabbb")  # two frames: a resample of one frame only has one class

    def spread(rows: np.ndarray) -> float:
        picked = values[rows]
        return math.nan if picked.min() == picked.max() else float(picked.mean())

    interval = by_group(spread, groups, resamples=400)
    assert 0 < interval.resamples < 400 and interval.low == interval.high == 0.5
    never = by_group(lambda rows: math.nan, groups)
    assert never.resamples == 0 and math.isnan(never.low) and str(never) == "interval n/a"
    assert never.to_json()["low"] is None


@pytest.mark.parametrize("options", [{"level": 1.0}, {"level": 0.0}, {"resamples": 0}])
def test_bad_settings_are_refused(options):
    with pytest.raises(ValueError):
        by_group(lambda rows: 0.0, ["a"], **options)
