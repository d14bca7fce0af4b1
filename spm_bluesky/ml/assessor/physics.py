"""Physics beside the network: a scale-free line-streak detector for unstable tips.

Numpy and scipy only (no torch), and scale-free: the detector compares a frame's scan lines
with its own columns, never with an absolute height, so a quiet instrument's 0.3 pm streaks
and a noisy one's 30 pm streaks read the same. Scanning draws an image line by line, so a
tip change streaks lines (a jump, or a single bright or dark line), never columns, while the
surface's own features streak both alike (:func:`streaks`). Scanbot calls a scan bad when
more than five lines changed the tip.

:func:`veto` is the rule one can apply beside the network: its threshold
(:data:`VETO_EXCESS`) is calibrated on twin images only (:func:`calibrate_veto`), never on
the real set. Measured (docs/explanation/assessor.md): the streak excess ranks the real
set's unstable images above its good ones (AUC 0.90), but the twin's good frames carry
more line noise than real ones, so a threshold that keeps the twin's figures lets most real
streaks through; ``eval assessor --real`` prints the figures with the veto beside those
without, and the assessor does not apply it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import median_filter

from spm_bluesky.domain.display import levelled
from spm_bluesky.protocols import CLASSES, GOOD

#: A line (or column) is streaky when its streak strength is this many times the typical
#: strength of the image's lines and columns.
STREAK_FACTOR = 2.0
#: The veto: streaky lines minus streaky columns, over lines, above which the tip is called
#: unstable. Calibrated on twin images only (:func:`calibrate_veto`: the 99th percentile of
#: the good tips' excess among 3000 validation-split frames of base 1), never on the real set.
VETO_EXCESS = 0.19
#: p(good) is multiplied by this when the veto fires (the rest goes to ``unstable``).
VETO_FACTOR = 0.1
#: Shortest streak that counts, as a fraction of the line (at least MIN_STREAK_PX pixels).
STREAK_LENGTH = 1 / 8
MIN_STREAK_PX = 8
UNSTABLE = "unstable"


@dataclass(frozen=True)
class Streaks:
    """What :func:`streaks` finds in one frame."""

    #: Scan lines (along the fast axis) whose streak strength stands out.
    lines: int
    #: Columns (along the slow axis) whose strength stands out: what the image's own
    #: features give, since a tip change cannot streak a column.
    columns: int
    #: Lines over all lines minus columns over all columns.
    excess: float


def _check(image: np.ndarray) -> np.ndarray:
    array = np.asarray(image, dtype=np.float64)
    if array.ndim != 2 or min(array.shape) < 8:
        raise ValueError(f"expected a 2-D image of at least 8 x 8 px, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError("image contains NaN or infinite values")
    return array


def streak_strength(heights: np.ndarray) -> np.ndarray:
    """Per row of ``heights`` (except the first and last), its strongest streak (m).

    A row's departure from the mean of its neighbours above and below (a single bright or
    dark line gives its full height, a jump half of it), median-filtered along the row over
    :data:`STREAK_LENGTH` of it (one pixel spikes and features narrower than that do not
    count), and the largest absolute value along the row.
    """
    curvature = heights[1:-1, :] - (heights[:-2, :] + heights[2:, :]) / 2
    length = max(MIN_STREAK_PX, round(heights.shape[1] * STREAK_LENGTH))
    smooth = median_filter(curvature, size=(1, length), mode="nearest")
    return np.abs(smooth).max(axis=1)


def streaks(image: np.ndarray) -> Streaks:
    """Streaky scan lines of a frame, compared with its columns (scale-free).

    Scanning draws the image line by line, so a tip change streaks lines, never columns;
    the image's own features streak both alike. The unit is the larger of the median line
    and the median column strength (the image's own noise and texture, whatever its height
    scale); a line or column counts when it is :data:`STREAK_FACTOR` units strong.
    """
    heights = levelled(_check(image))
    rows, columns = streak_strength(heights), streak_strength(heights.T)
    unit = max(float(np.median(rows)), float(np.median(columns)), np.finfo(np.float64).tiny)
    n_rows = int(np.sum(rows > STREAK_FACTOR * unit))
    n_columns = int(np.sum(columns > STREAK_FACTOR * unit))
    return Streaks(n_rows, n_columns, n_rows / len(rows) - n_columns / len(columns))


def calibrate_veto(good_images: Sequence[np.ndarray], quantile: float = 0.99) -> float:
    """The veto threshold that lets ``quantile`` of good tips' frames through: how
    :data:`VETO_EXCESS` was set, on twin images of good tips (never on the real set)."""
    excess = [streaks(image).excess for image in good_images]
    if not excess:
        raise ValueError("calibrate_veto needs at least one image")
    return float(np.quantile(excess, quantile))


def veto(probabilities: np.ndarray, image: np.ndarray,
         threshold: float = VETO_EXCESS) -> np.ndarray:
    """``probabilities`` (CLASSES order) after the line-streak veto: when the frame's
    :attr:`Streaks.excess` is over ``threshold``, p(good) is multiplied by
    :data:`VETO_FACTOR` and what it loses goes to ``unstable``."""
    out = np.array(probabilities, dtype=np.float64)
    if streaks(image).excess > threshold:
        good, unstable = CLASSES.index(GOOD), CLASSES.index(UNSTABLE)
        moved = out[good] * (1.0 - VETO_FACTOR)
        out[good] -= moved
        out[unstable] += moved
    return out
