"""Image preprocessing shared by the plans, the assessor and the agent (pure numpy).

The steps follow DeepSPM: a robust degree-1 plane fit (background = the flat substrate,
found by iterated trimming instead of RANSAC so the result is deterministic), then
``clip(h / 1 Angstrom - 1, -1.5, 1.5)`` so the background sits at -1 and features up to
+2.5 Angstrom keep their contrast.
"""

from __future__ import annotations

import numpy as np

ANGSTROM = 1e-10
#: Pixels within this height of the fitted plane count as background (DeepSPM: 5 pm).
BACKGROUND_TOLERANCE = 5e-12


def _check_image(image: np.ndarray) -> np.ndarray:
    array = np.asarray(image, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {array.shape}")
    if array.size == 0 or min(array.shape) < 2:
        raise ValueError(f"image is empty or degenerate: shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError("image contains NaN or infinite values")
    return array


def fit_plane(image: np.ndarray, iterations: int = 4) -> np.ndarray:
    """The background plane of ``image`` (same shape), fitted robustly.

    Each iteration refits on the pixels closest to the current plane (the lowest 60 %
    of residuals, which on a sub-monolayer surface is the bare substrate).
    """
    array = _check_image(image)
    rows, cols = array.shape
    yy, xx = np.mgrid[0:rows, 0:cols]
    design = np.stack([np.ones(array.size), xx.ravel() / cols, yy.ravel() / rows], axis=1)
    values = array.ravel()
    keep = np.ones(array.size, dtype=bool)
    coef = np.zeros(3)
    for _ in range(iterations):
        coef, *_ = np.linalg.lstsq(design[keep], values[keep], rcond=None)
        residual = values - design @ coef
        keep = residual <= np.quantile(residual, 0.6)
    return (design @ coef).reshape(rows, cols)


def subtract_plane(image: np.ndarray) -> np.ndarray:
    """Heights above the fitted background plane (m), float64."""
    array = _check_image(image)
    return array - fit_plane(array)


def flatten_lines(image: np.ndarray) -> np.ndarray:
    """Plane subtraction followed by per-line median levelling (removes line offsets)."""
    flat = subtract_plane(image)
    return flat - np.median(flat, axis=1, keepdims=True)


def normalise(heights: np.ndarray) -> np.ndarray:
    """DeepSPM's network input: ``clip(h / 1 A - 1, -1.5, 1.5)`` as float32."""
    return np.clip(np.asarray(heights) / ANGSTROM - 1.0, -1.5, 1.5).astype(np.float32)


def line_jumps(image: np.ndarray, threshold: float = 6.0) -> np.ndarray:
    """Indices of scan lines where the height jumps abruptly (a tip change).

    The jump between neighbouring lines is the median of their pixel-wise difference (robust
    to features crossing the lines); a line is reported when its jump exceeds ``threshold``
    times the typical jump (median absolute deviation).
    """
    flat = subtract_plane(image)
    steps = np.median(np.diff(flat, axis=0), axis=1)
    scale = 1.4826 * np.median(np.abs(steps - np.median(steps))) + 1e-13
    return np.flatnonzero(np.abs(steps) > threshold * scale) + 1


def peak_to_peak(image: np.ndarray) -> float:
    """Height range after plane subtraction (m): over 0.6 nm means debris or rough ground."""
    flat = subtract_plane(image)
    low, high = np.quantile(flat, [0.005, 0.995])
    return float(high - low)
