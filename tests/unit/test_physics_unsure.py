"""The line-streak detector, the unsure calibration and the session's count of unsure images."""

from __future__ import annotations

import numpy as np
import pytest

from spm_bluesky.autonomy.rules import SessionState, Verdict
from spm_bluesky.ml.assessor import physics, unsure
from spm_bluesky.protocols import CLASSES


def surface(scale: float, seed: int = 0, pixels: int = 96) -> np.ndarray:
    """Gaussian bumps on a tilted plane with white noise, all heights times ``scale``."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:pixels, 0:pixels].astype(float)
    image = 0.01 * x + 0.02 * y
    for cx, cy in rng.uniform(5, pixels - 5, size=(12, 2)):
        image += np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 8.0)
    return scale * (image + 0.05 * rng.normal(size=image.shape))


def with_streaks(image: np.ndarray, lines: list[int], height: float) -> np.ndarray:
    """``image`` with single bright lines over half their length (a tip that changed)."""
    out = image.copy()
    for line in lines:
        out[line, 10:58] += height
    return out


def test_streaks_are_found_whatever_the_height_scale():
    lines = [12, 20, 33, 41, 55, 62, 70, 84]
    for scale in (1e-12, 1e-10):  # a quiet instrument's picometres, a molecule's angstroms
        clean = physics.streaks(surface(scale))
        streaky = physics.streaks(with_streaks(surface(scale), lines, 0.5 * scale))
        assert clean.excess <= 0.02
        assert streaky.lines >= len(lines) and streaky.excess > physics.VETO_EXCESS


def test_columns_cancel_what_the_surface_itself_shows():
    # The same surface turned by 90 degrees: its features streak columns as much as lines.
    image = surface(1e-10, seed=3)
    assert abs(physics.streaks(image).excess - (-physics.streaks(image.T).excess)) < 1e-12


def test_veto_moves_p_good_to_unstable_only_when_it_fires():
    p = np.array([0.6, 0.1, 0.1, 0.1, 0.1])
    np.testing.assert_allclose(physics.veto(p, surface(1e-10)), p)
    vetoed = physics.veto(p, with_streaks(surface(1e-10), [12, 20, 33, 41, 55, 62, 70, 84],
                                           0.5e-10))
    good, unstable = CLASSES.index("good"), CLASSES.index("unstable")
    assert vetoed[good] == pytest.approx(0.6 * physics.VETO_FACTOR)
    assert vetoed[unstable] == pytest.approx(0.1 + 0.6 * (1 - physics.VETO_FACTOR))
    assert vetoed.sum() == pytest.approx(1.0)


def test_calibrate_veto_is_a_quantile_of_good_frames():
    images = [surface(1e-10, seed=s) for s in range(5)]
    excess = [physics.streaks(i).excess for i in images]
    assert physics.calibrate_veto(images, 1.0) == pytest.approx(max(excess))
    with pytest.raises(ValueError, match="at least one image"):
        physics.calibrate_veto([])
    with pytest.raises(ValueError, match="NaN"):
        physics.streaks(np.full((16, 16), np.nan))


def _features(rng: np.random.Generator, n: int, centre: float) -> np.ndarray:
    return rng.normal(centre, 1.0, size=(n, 8))


def test_unsure_calibration_flags_far_features_and_keeps_its_rate(tmp_path):
    rng = np.random.default_rng(1)
    fit = np.concatenate([_features(rng, 200, 0.0), _features(rng, 200, 4.0)])
    labels = np.repeat([0, 1], 200)
    threshold = np.concatenate([_features(rng, 300, 0.0), _features(rng, 300, 4.0)])
    calibration = unsure.fit(fit, labels, threshold, [1] * 600, "tipnet-test", quantile=0.95)
    assert calibration.twin_rate == pytest.approx(0.05, abs=0.01)
    near = calibration.frame_scores(_features(rng, 400, 0.0), [1] * 400)
    far = calibration.frame_scores(_features(rng, 50, 12.0), [1] * 50)
    assert np.mean(near > calibration.threshold) < 0.1
    assert np.all(far > calibration.threshold)
    # A frame is as unfamiliar as its most unfamiliar window.
    mixed = np.concatenate([_features(rng, 3, 0.0), _features(rng, 1, 12.0)])
    assert calibration.frame_scores(mixed, [4])[0] == calibration.scores(mixed).max()

    weights = tmp_path / "model.pt"
    calibration.save(unsure.calibration_path(weights))
    loaded = unsure.load_calibration(weights, "tipnet-test")
    assert loaded is not None and loaded.threshold == calibration.threshold
    np.testing.assert_allclose(loaded.frame_scores(mixed, [4]),
                               calibration.frame_scores(mixed, [4]), rtol=1e-5)
    with pytest.raises(ValueError, match="calibrates tipnet-test, not tipnet-other"):
        unsure.load_calibration(weights, "tipnet-other")
    assert unsure.load_calibration(tmp_path / "absent.pt", "tipnet-test") is None


def test_unsure_scores_are_the_mahalanobis_distance_to_the_nearest_mean():
    """The expanded form the assessor computes equals the definition, class by class."""
    rng = np.random.default_rng(3)
    fit = np.concatenate([_features(rng, 200, 0.0), _features(rng, 200, 4.0)])
    calibration = unsure.fit(fit, np.repeat([0, 1], 200), fit, [1] * 400, "tipnet-test")
    x = np.concatenate([_features(rng, 20, 0.0), _features(rng, 20, 4.0),
                        _features(rng, 5, 30.0)])
    diff = x[:, None, :] - calibration.means[None]
    direct = np.einsum("nck,kl,ncl->nc", diff, calibration.precision, diff).min(axis=1)
    np.testing.assert_allclose(calibration.scores(x), direct, rtol=1e-9, atol=1e-9)


def test_unsure_calibration_needs_more_windows_than_features():
    rng = np.random.default_rng(2)
    with pytest.raises(ValueError, match="more labelled windows"):
        unsure.fit(_features(rng, 5, 0.0), np.zeros(5), _features(rng, 5, 0.0), [1] * 5, "x")


def test_a_run_of_unsure_images_pauses_and_starts_again():
    state = SessionState("s")
    verdicts = [Verdict.UNSURE, Verdict.UNSURE, Verdict.KEPT, Verdict.UNSURE, Verdict.DEBRIS,
                Verdict.UNSURE, Verdict.UNSURE, Verdict.UNSURE, Verdict.UNSURE, Verdict.BAD]
    pauses = [i for i, v in enumerate(verdicts) if state.count_unsure(v, 3)]
    # A sure image ends a run; debris leaves it; the count starts again after a pause.
    assert pauses == [6]
    assert state.unsure_images == 7 and state.consecutive_unsure == 0
