"""How far an image is from what the assessor knows: the ``unsure`` verdict.

A window's score is the squared Mahalanobis distance of its penultimate features (the
network's pooled features, the input of its last linear layer) to the nearest class mean,
with one covariance shared by the classes (Lee et al. 2018, "A simple unified framework for
detecting out-of-distribution samples"); a frame's score is its windows' highest (a frame
is as unfamiliar as its most unfamiliar part, as one streaky window makes it bad). Means
and covariance come from the windows of twin frames the network was trained on; the
threshold is a quantile of the scores of *other* twin frames (the validation split), so that
about ``1 - quantile`` of the twin's own images are unsure, and an image unlike the twin's
is unsure.

:func:`calibrate_unsure` makes the calibration after training and writes it beside the
weights (``<stem>.unsure.npz``, read with ``allow_pickle=False``); the assessor loads it
with the weights (:func:`load_calibration`) and refuses one made for other weights.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from spm_bluesky.protocols import CLASSES

if TYPE_CHECKING:
    from spm_bluesky.ml.assessor.assessor import FrameAssessor, TipNetAssessor

#: Share of the twin's validation frames under the threshold.
QUANTILE = 0.98
#: Ridge added to the covariance's diagonal, relative to its mean variance.
SHRINKAGE = 1e-3
SUFFIX = ".unsure.npz"


@dataclass(frozen=True)
class UnsureCalibration:
    """Class means, the shared precision matrix and the threshold, for one weight file."""

    model_id: str
    means: np.ndarray  # (classes, features)
    precision: np.ndarray  # (features, features)
    threshold: float
    quantile: float
    #: Share of the threshold frames over the threshold (about 1 - quantile).
    twin_rate: float
    fit_windows: int
    threshold_frames: int

    @cached_property
    def _mean_terms(self) -> np.ndarray:
        """``mean P mean`` of each class mean (the precision P is symmetric)."""
        return np.einsum("ck,kl,cl->c", self.means, self.precision, self.means)

    def scores(self, features: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance of each row of ``features`` to the nearest mean.

        Expanded as ``x P x - 2 x P m + m P m``: one product with the precision per window
        instead of one per class (the assessor's latency at batch 1)."""
        x = np.asarray(features, dtype=np.float64)
        projected = x @ self.precision
        distances = ((projected * x).sum(axis=1)[:, None] - 2.0 * projected @ self.means.T
                     + self._mean_terms[None])
        return np.asarray(distances.min(axis=1))

    def frame_scores(self, window_features: np.ndarray, counts: Sequence[int]) -> np.ndarray:
        """Each frame's score: the highest of its windows' (``counts`` windows per frame,
        in order)."""
        scores = self.scores(window_features)
        return np.array([part.max() for part in np.split(scores, np.cumsum(counts)[:-1])])

    def summary(self) -> dict[str, Any]:
        """What the model card records: method, threshold, quantile, twin rate, frames."""
        return {"method": "highest over a frame's windows of the squared Mahalanobis "
                          "distance of the penultimate features to the nearest class mean "
                          "(shared covariance)",
                "threshold": self.threshold, "quantile": self.quantile,
                "twin_rate": self.twin_rate, "fit_windows": self.fit_windows,
                "threshold_frames": self.threshold_frames}

    def save(self, path: Path | str) -> Path:
        """Write the calibration as an ``.npz`` (arrays and a JSON header; no pickles)."""
        path = Path(path)
        header = {"model_id": self.model_id, **self.summary()}
        with path.open("wb") as handle:
            np.savez(handle, means=self.means.astype(np.float32),
                     precision=self.precision.astype(np.float32),
                     header=np.array(json.dumps(header)))
        return path


def calibration_path(weights: Path | str) -> Path:
    """Where the calibration of a weight file lives: ``<stem>.unsure.npz`` beside it."""
    weights = Path(weights)
    return weights.with_name(weights.stem + SUFFIX)


def load_calibration(weights: Path | str, model_id: str) -> UnsureCalibration | None:
    """The calibration beside ``weights``, or None if there is none. ValueError if it was
    made for other weights (a retrained model must be calibrated again)."""
    path = calibration_path(weights)
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as stored:
        header = json.loads(str(stored["header"]))
        means = stored["means"].astype(np.float64)
        precision = stored["precision"].astype(np.float64)
    if header["model_id"] != model_id:
        raise ValueError(f"{path} calibrates {header['model_id']}, not {model_id}: run "
                         "calibrate_unsure for these weights (spm-bluesky train assessor does)")
    return UnsureCalibration(model_id, means, precision, float(header["threshold"]),
                             float(header["quantile"]), float(header["twin_rate"]),
                             int(header["fit_windows"]), int(header["threshold_frames"]))


class Dataset(Protocol):
    """A labelled twin set as :mod:`spm_bluesky.ml.assessor.data` makes it (named here by
    its shape, so that the assessor does not import the twin)."""

    groups: list[Any]

    def column(self, name: str) -> np.ndarray:
        """One scene field over all frames (``label``: the class index)."""
        ...


def _windows(assessor: TipNetAssessor, dataset: Dataset) -> tuple[np.ndarray, list[int],
                                                                   np.ndarray]:
    """Window features, windows per frame, and each window's class label."""
    from spm_bluesky.domain import processing

    prepared = [x for g in dataset.groups
                for x in processing.prepare_batch(g.images, g.scan_sizes)]
    counts = [len(p) for p in prepared]
    labels = np.repeat(dataset.column("label").astype(int), counts)
    return assessor.window_features(prepared), counts, labels


def fit(features: np.ndarray, labels: np.ndarray, threshold_features: np.ndarray,
        threshold_counts: Sequence[int], model_id: str,
        quantile: float = QUANTILE) -> UnsureCalibration:
    """A calibration from labelled fit windows' features and the threshold frames'
    window features (``threshold_counts`` windows per frame)."""
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    present = [c for c in range(len(CLASSES)) if np.any(labels == c)]
    if len(features) <= features.shape[1] or not present:
        raise ValueError(f"calibrate_unsure needs more labelled windows ({len(features)}) than "
                         f"features ({features.shape[1]})")
    means = np.stack([features[labels == c].mean(axis=0) for c in present])
    centred = features - means[np.searchsorted(present, labels)]
    covariance = centred.T @ centred / len(features)
    covariance += SHRINKAGE * np.trace(covariance) / len(covariance) * np.eye(len(covariance))
    precision = np.linalg.inv(covariance)
    probe = UnsureCalibration(model_id, means, precision, np.inf, quantile, 0.0, 0, 0)
    scores = probe.frame_scores(threshold_features, threshold_counts)
    threshold = float(np.quantile(scores, quantile))
    return UnsureCalibration(model_id, means, precision, threshold, quantile,
                             float(np.mean(scores > threshold)), len(features), len(scores))


def calibrate_unsure(assessor: TipNetAssessor, fit_set: Dataset, threshold_set: Dataset,
                     weights: Path | str, quantile: float = QUANTILE) -> UnsureCalibration:
    """Calibrate the unsure score of ``assessor`` and write it beside ``weights``.

    ``fit_set``: labelled twin frames the network learnt from (class means, covariance);
    ``threshold_set``: other twin frames (the validation split), whose ``quantile`` sets
    the threshold. Returns the calibration (its :meth:`~UnsureCalibration.summary` is
    what the model card records).
    """
    fit_features, _, labels = _windows(assessor, fit_set)
    threshold_features, counts, _ = _windows(assessor, threshold_set)
    calibration = fit(fit_features, labels, threshold_features, counts, assessor.model_id,
                      quantile)
    calibration.save(calibration_path(weights))
    return calibration


def rate(unsure: Sequence[bool] | np.ndarray) -> float:
    """Share of unsure frames (NaN for none)."""
    flags = np.asarray(unsure, dtype=bool)
    return float(flags.mean()) if len(flags) else float("nan")


class UnsureTally:
    """An assessor that keeps the unsure verdicts of every frame it judges in batches:
    what ``eval assessor`` wraps around the assessor to report the twin's unsure rate
    (same probabilities as the assessor's own)."""

    def __init__(self, assessor: FrameAssessor) -> None:
        self.assessor = assessor
        self.unsure: list[bool] = []

    @property
    def model_id(self) -> str:
        """The wrapped assessor's model id."""
        return self.assessor.model_id

    @property
    def abstains(self) -> bool:
        """True if the wrapped assessor gives unsure scores."""
        return self.assessor.abstains

    def assess(self, image_m: np.ndarray, scan_size_m: float) -> Any:
        """Judge one frame (the wrapped assessor's answer), keeping its unsure verdict."""
        assessment = self.assessor.assess(image_m, scan_size_m)
        self.unsure.append(assessment.unsure)
        return assessment

    def probabilities(self, prepared: Sequence[np.ndarray]) -> np.ndarray:
        """Calibrated probabilities for prepared frames, keeping their unsure verdicts."""
        probabilities, scores = self.assessor.judge(prepared)
        self.unsure += self.assessor.is_unsure(scores).tolist()
        return probabilities

    def rate(self) -> float:
        """Share of the frames judged so far that were unsure (NaN without a calibration)."""
        return rate(self.unsure) if self.abstains else float("nan")
