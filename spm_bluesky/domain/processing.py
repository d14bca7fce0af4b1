"""Image preprocessing shared by the plans, the assessor and the agent (pure numpy).

The steps follow DeepSPM: a robust degree-1 plane fit (background = the flat substrate,
found by iterated trimming instead of RANSAC so the result is deterministic), then
``clip(h / 1 Angstrom - 1, -1.5, 1.5)`` so the background sits at -1 and features up to
+2.5 Angstrom keep their contrast.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

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


@functools.lru_cache(maxsize=8)
def _plane_design(rows: int, cols: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The plane fit's design matrix ``(rows * cols, 3)`` (1, x, y per pixel), its transpose
    (contiguous) and the pixels' outer products ``(rows * cols, 9)``; read-only.

    Shared by both plane fits (:func:`refit_plane`, :func:`subtract_plane_batch`) and
    cached per image shape: building them costs about 0.15 ms for a 64 px window, more than
    the four refits together, and every frame of a session has the same shape.
    """
    yy, xx = np.mgrid[0:rows, 0:cols]
    design = np.stack([np.ones(rows * cols), xx.ravel() / cols, yy.ravel() / rows], axis=1)
    products = (design[:, :, None] * design[:, None, :]).reshape(-1, 9)
    arrays = (design, np.ascontiguousarray(design.T), products)
    for array in arrays:
        array.flags.writeable = False
    return arrays


def refit_plane(array: np.ndarray, iterations: int,
                inliers: Callable[[np.ndarray], np.ndarray | None]) -> np.ndarray:
    """The least-squares plane of a checked 2-D ``array`` (same shape), refitted
    ``iterations`` times on the pixels ``inliers(residuals)`` keeps; ``None`` stops early.

    The one plane-fitting loop: the assessor's substrate fit (:func:`fit_plane`) and the
    display's outlier-free mean plane differ only in which pixels they keep.
    """
    rows, cols = array.shape
    design = _plane_design(rows, cols)[0]
    values = array.ravel()
    keep = np.ones(array.size, dtype=bool)
    coef = np.zeros(3)
    for _ in range(iterations):
        coef, *_ = np.linalg.lstsq(design[keep], values[keep], rcond=None)
        kept = inliers(values - design @ coef)
        if kept is None:
            break
        keep = kept
    return (design @ coef).reshape(rows, cols)


def fit_plane(image: np.ndarray, iterations: int = 4) -> np.ndarray:
    """The background plane of ``image`` (same shape), fitted robustly.

    Each iteration refits on the pixels closest to the current plane (the lowest 60 %
    of residuals, which on a sub-monolayer surface is the bare substrate).
    """
    return refit_plane(_check_image(image), iterations,
                       lambda residual: residual <= np.quantile(residual, 0.6))


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


# --- network input ------------------------------------------------------------------------
#
# The networks see 64 x 64 px windows at about DeepSPM's pixel (10 nm / 64 px = 0.156 nm):
# fine enough for a double tip's ghost 0.5 nm away or a molecule's four lobes. A frame up to
# 10 nm is one window (resampled to 64 px, so its pixel is finer); a bigger frame is
# resampled to that pixel and covered by overlapping 64 px windows (four for 10 to 20 nm);
# frames over 20 nm are judged on their central 20 nm, the largest size trained on.

#: Edge of a network input in pixels: DeepSPM's 64 x 64.
NETWORK_PIXELS = 64
#: Edge of one window (m): DeepSPM's 10 nm frame.
NETWORK_WINDOW = 10e-9
#: Largest part of a frame that is looked at (m): the central 20 nm of bigger frames.
MAX_EXTENT = 20e-9
#: Image edges (px) that :func:`prepare` accepts: the instrument's ``Scan:Pixels`` range.
MIN_PIXELS, MAX_PIXELS = 8, 1024
#: Heights or scan sizes above this (m) cannot be in metres: a 10 um STM frame has no meaning.
_METRES_LIMIT = 1e-5


def _resample_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights: box-filter averaging to shrink, linear interpolation to grow.

    Pixel ``i`` covers ``[i, i + 1)`` of the input axis; the two grids share their edges.
    """
    if n_out <= n_in:
        scale = n_in / n_out
        lo = np.arange(n_out)[:, None] * scale
        cells = np.arange(n_in)[None, :]
        overlap = np.clip(np.minimum(lo + scale, cells + 1) - np.maximum(lo, cells), 0.0, None)
        return overlap / scale
    centre = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0, n_in - 1)
    left = np.minimum(np.floor(centre).astype(int), n_in - 2) if n_in > 1 else np.zeros(
        n_out, dtype=int)
    frac = centre - left
    matrix = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    matrix[rows, left] = 1.0 - frac
    if n_in > 1:
        matrix[rows, left + 1] += frac
    return matrix


def resample(image: np.ndarray, pixels: int) -> np.ndarray:
    """``image`` on a ``pixels x pixels`` grid covering the same area, float64.

    Shrinking averages the input pixels each output pixel covers (no aliasing of noise);
    growing interpolates linearly. Both are linear, so a plane stays a plane.
    """
    array = np.asarray(image, dtype=np.float64)
    if array.ndim != 2 or array.size == 0:
        raise ValueError(f"expected a non-empty 2-D image, got shape {array.shape}")
    if (pixels, pixels) == array.shape:
        return array.copy()
    rows = _resample_matrix(array.shape[0], pixels)
    cols = _resample_matrix(array.shape[1], pixels)
    return rows @ array @ cols.T


def _row_quantile(values: np.ndarray, q: float) -> np.ndarray:
    """``np.quantile(values, q, axis=1, keepdims=True)`` (linear method) by partitioning."""
    position = q * (values.shape[1] - 1)
    low = int(np.floor(position))
    high = min(low + 1, values.shape[1] - 1)
    part = np.partition(values, [low, high], axis=1)
    frac = position - low
    return (part[:, low] + (part[:, high] - part[:, low]) * frac)[:, None]


def subtract_plane_batch(images: np.ndarray, iterations: int = 4) -> np.ndarray:
    """:func:`subtract_plane` for a stack ``(n, rows, cols)`` at once, float64.

    The same robust fit (refit on the lowest 60 % of residuals, ``iterations`` times),
    solved by normal equations for all images together: equal to :func:`subtract_plane`
    per image up to float rounding, and about 20x faster on 64 px images.
    """
    stack = np.asarray(images, dtype=np.float64)
    if stack.ndim != 3 or stack.shape[0] == 0 or min(stack.shape[1:]) < 2:
        raise ValueError(f"expected a non-empty (n, rows, cols) stack, got shape {stack.shape}")
    n, rows, cols = stack.shape
    design, design_t, products = _plane_design(rows, cols)
    values = stack.reshape(n, -1)
    keep = np.ones(values.shape, dtype=np.float64)
    plane = np.zeros_like(values)
    for _ in range(iterations):
        normal = (keep @ products).reshape(n, 3, 3)
        rhs = (keep * values) @ design
        coef = np.linalg.solve(normal, rhs[..., None])[..., 0]
        plane = coef @ design_t
        residual = values - plane
        keep = (residual <= _row_quantile(residual, 0.6)).astype(np.float64)
    return (values - plane).reshape(n, rows, cols)


def check_frame_image(image: np.ndarray, scan_size_m: float) -> np.ndarray:
    """The image as float64 if it is a square frame in metres that :func:`prepare` accepts.

    Raises ValueError, saying what is wrong, for: not 2-D, empty, not square, outside 8 to
    1024 px, not real numbers, NaN or infinite values, heights or a scan size that cannot
    be metres (a range or size over 10 um), or a scan size that is not positive.
    """
    array = np.asarray(image)
    if array.size == 0:
        raise ValueError(f"image is empty (shape {array.shape})")
    if array.ndim != 2:
        raise ValueError(f"expected a 2-D image (rows, columns), got {array.ndim}-D shape "
                         f"{array.shape}")
    if array.shape[0] != array.shape[1]:
        raise ValueError(f"expected a square frame, got shape {array.shape}")
    if not MIN_PIXELS <= array.shape[0] <= MAX_PIXELS:
        raise ValueError(f"frame has {array.shape[0]} px per edge; expected "
                         f"{MIN_PIXELS} to {MAX_PIXELS}")
    if array.dtype.kind not in "fiu":
        raise ValueError(f"expected real heights in metres, got dtype {array.dtype}")
    array = array.astype(np.float64)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"image contains {int(np.sum(~np.isfinite(array)))} NaN or "
                         "infinite values")
    if np.ptp(array) > _METRES_LIMIT:
        raise ValueError(f"height range {np.ptp(array):.3g} is over 10 um: heights must be "
                         "in metres")
    size = float(scan_size_m)
    if not (np.isfinite(size) and 0.0 < size <= _METRES_LIMIT):
        raise ValueError(f"scan size {scan_size_m!r} must be a positive length in metres "
                         "(at most 10 um)")
    return array


def central_region(image: np.ndarray, scan_size_m: float) -> tuple[np.ndarray, float]:
    """The central :data:`MAX_EXTENT` (whole pixels, at least 2) of a bigger frame and its
    edge (m); else the frame."""
    if scan_size_m <= MAX_EXTENT:
        return image, scan_size_m
    n = image.shape[0]
    keep = max(2, int(n * MAX_EXTENT / scan_size_m))
    start = (n - keep) // 2
    return image[start:start + keep, start:start + keep], scan_size_m * keep / n


def frame_windows(image: np.ndarray, scan_size_m: float,
                  pixels: int = NETWORK_PIXELS) -> np.ndarray:
    """The ``(k, pixels, pixels)`` windows (m, float64) a frame is judged on.

    A frame up to :data:`NETWORK_WINDOW` is one window; a bigger one (its central
    :data:`MAX_EXTENT` at most) is resampled to ``NETWORK_WINDOW / pixels`` per pixel and
    covered by the fewest evenly spread, overlapping windows.
    """
    region, size = central_region(np.asarray(image, dtype=np.float64), scan_size_m)
    size = min(size, MAX_EXTENT)  # a frame of a few pixels cannot be cut finer
    if size <= NETWORK_WINDOW * (1 + 1e-9):
        return resample(region, pixels)[None]
    edge = round(size / NETWORK_WINDOW * pixels)
    full = resample(region, edge)
    starts = np.linspace(0, edge - pixels, math.ceil(edge / pixels)).round().astype(int)
    return np.stack([full[r:r + pixels, c:c + pixels] for r in starts for c in starts])


def to_network_input(windows: np.ndarray) -> np.ndarray:
    """Plane subtraction and DeepSPM normalisation of windows ``(n, px, px)`` in metres.

    The last steps of :func:`prepare_batch`, shared with training (which cuts its own
    augmented windows): float32, background at -1.
    """
    return normalise(subtract_plane_batch(windows))


def prepare_batch(
    images: np.ndarray | list[np.ndarray],
    scan_size_m: float | list[float] | np.ndarray,
    pixels: int = NETWORK_PIXELS,
) -> list[np.ndarray]:
    """Network inputs for frames in metres of any 8 to 1024 px: one ``(k, pixels, pixels)``
    float32 stack of windows per frame.

    Per frame: checks (:func:`check_frame_image`), windows (:func:`frame_windows`), then per
    window a robust plane subtraction and DeepSPM's ``clip(h / 1 A - 1, -1.5, 1.5)``.
    Frames may differ in size; ``scan_size_m`` is one edge (m) for all or one per frame.
    """
    if isinstance(images, np.ndarray) and images.ndim != 3:
        raise ValueError(f"expected a stack (n, px, px) or a list of 2-D frames, got shape "
                         f"{images.shape}")
    frames = list(images)
    if not frames:
        raise ValueError("no images given")
    sizes = np.broadcast_to(np.asarray(scan_size_m, dtype=np.float64), (len(frames),))
    windows = [frame_windows(check_frame_image(frame, size), float(size), pixels)
               for frame, size in zip(frames, sizes, strict=True)]
    inputs = to_network_input(np.concatenate(windows))
    bounds = np.cumsum([len(w) for w in windows])[:-1]
    return np.split(inputs, bounds)


def prepare(image: np.ndarray, scan_size_m: float, pixels: int = NETWORK_PIXELS) -> np.ndarray:
    """The network input for one frame: ``(k, pixels, pixels)`` float32 windows
    (``k = 1`` up to 10 nm, 4 for 10 to 20 nm); see :func:`prepare_batch`."""
    return prepare_batch([image], scan_size_m, pixels)[0]


# --- empty spots for conditioning actions -------------------------------------------------

#: Pixels within this height of the background plane are "empty" (DeepSPM: 0.01 nm).
EMPTY_TOLERANCE = 0.01e-9


def empty_pixels(image: np.ndarray, tolerance: float = EMPTY_TOLERANCE) -> np.ndarray:
    """Boolean mask of flat, molecule-free pixels: within ``tolerance`` (m) of the plane.

    The plane-subtracted image is line-levelled first (:func:`flatten_lines`): per-line
    offsets of a few pm would otherwise break every empty area into strips.
    """
    return np.abs(flatten_lines(image)) <= tolerance


def largest_empty_square(
    image: np.ndarray, scan_size_m: float, tolerance: float = EMPTY_TOLERANCE
) -> tuple[float, tuple[float, float]]:
    """Edge (m) and centre (x, y) of the largest all-empty square, by dynamic programming.

    The centre is relative to the frame centre (m); x follows columns, y follows rows (row 0
    is the lowest y, as the twin and the IOC scan). The square ending at pixel (i, j) has
    edge ``min(diagonal + 1, empty run upward, empty run leftward)``, one row at a time.
    An image with no empty pixel gives ``(0.0, (0.0, 0.0))``.
    """
    empty = empty_pixels(image, tolerance)
    rows, cols = empty.shape
    pixel = float(scan_size_m) / cols
    col_index = np.arange(cols)[None, :]
    row_index = np.arange(rows)[:, None]
    left = col_index - np.maximum.accumulate(np.where(empty, -1, col_index), axis=1)
    up = row_index - np.maximum.accumulate(np.where(empty, -1, row_index), axis=0)
    best = np.zeros_like(left)
    best[0] = np.minimum(left[0], 1) * empty[0]
    for i in range(1, rows):
        diagonal = np.concatenate([[0], best[i - 1, :-1]]) + 1
        best[i] = np.minimum(np.minimum(diagonal, up[i]), left[i]) * empty[i]
    edge = int(best.max())
    if edge == 0:
        return 0.0, (0.0, 0.0)
    row, col = np.unravel_index(int(best.argmax()), best.shape)
    centre_row, centre_col = row - (edge - 1) / 2, col - (edge - 1) / 2
    x = (centre_col - (cols - 1) / 2) * pixel
    y = (centre_row - (rows - 1) / 2) * pixel
    return edge * pixel, (float(x), float(y))
