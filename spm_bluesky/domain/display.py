"""How an STM user first looks at a topograph: a robust plane fit and 0.5 to 99.5 % contrast.

The assessor's own preprocessing (:mod:`spm_bluesky.domain.processing`) fits the plane to the
lowest part of the image (DeepSPM's bare substrate) and clips at an absolute height scale.
A person opening a file does something simpler and scale-free: subtract the mean plane,
ignoring outliers, and stretch the colour scale between two percentiles so that a few spikes
do not wash the image out. Labelling by eye and the contact sheets use this view, so that what
was labelled is what is shown. Pure numpy.
"""

from __future__ import annotations

import numpy as np

from spm_bluesky.domain.processing import refit_plane

#: Percentiles of the colour scale's ends (%).
CONTRAST_PERCENTILES = (0.5, 99.5)
#: Pixels further than this many robust standard deviations from the plane are ignored.
OUTLIER_SIGMAS = 3.0


def robust_plane(image: np.ndarray, iterations: int = 5) -> np.ndarray:
    """The mean plane of ``image`` (same shape, float64), refitted without outliers.

    Each iteration keeps the pixels within :data:`OUTLIER_SIGMAS` robust standard deviations
    (1.4826 x the median absolute deviation) of the current plane: spikes, adsorbates and
    tip-change streaks do not tilt it. Symmetric, unlike the assessor's substrate fit.
    """
    array = np.asarray(image, dtype=np.float64)
    if array.ndim != 2 or min(array.shape) < 2:
        raise ValueError(f"expected a 2-D image of at least 2 x 2 px, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError("image contains NaN or infinite values")

    def inliers(residual: np.ndarray) -> np.ndarray | None:
        centre = np.median(residual)
        spread = 1.4826 * np.median(np.abs(residual - centre))
        if spread == 0.0:
            return None
        return np.abs(residual - centre) <= OUTLIER_SIGMAS * spread

    return refit_plane(array, iterations, inliers)


def levelled(image: np.ndarray) -> np.ndarray:
    """Heights above the robust plane (m, float64)."""
    array = np.asarray(image, dtype=np.float64)
    return array - robust_plane(array)


def contrast_limits(heights: np.ndarray,
                    percentiles: tuple[float, float] = CONTRAST_PERCENTILES) -> tuple[float, float]:
    """The colour scale's ends: the given percentiles of ``heights`` (a flat image gives a
    tiny symmetric range, so that it shows as one grey)."""
    low, high = (float(v) for v in np.percentile(heights, percentiles))
    if high <= low:
        return low - 1e-15, low + 1e-15
    return low, high


def display_image(image: np.ndarray) -> np.ndarray:
    """``image`` as a user first sees it: levelled, then mapped to 0..1 between the 0.5 and
    99.5 % heights (values outside are clipped)."""
    heights = levelled(image)
    low, high = contrast_limits(heights)
    return np.clip((heights - low) / (high - low), 0.0, 1.0)
