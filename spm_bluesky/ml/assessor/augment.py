"""Training-time augmentation: what real instruments vary and the twin does not (numpy).

Each training frame gives a random window at a random place and zoom, resampled to the
network's 64 px, given random contrast, noise, line offsets and tilt, plane-fitted like every image
in operation (:mod:`spm_bluesky.domain.processing`), then given what a plane fit leaves behind on
real data (a residual slope, scanner bow, a baseline offset) and a random flip. The point
is robustness on images the twin did not make, not a better fit to the twin.

With ``relative_heights`` (training with ``--scale-free``), the added heights (noise, line
offsets, residues) are scaled by each window's own height range over
:data:`REFERENCE_RANGE` (at most 1.5x): about 1 on the twin's molecules, far less on a
synthetic frame of 0.05 A corrugation, whose tip defect must not drown in noise that an
absolute scale would add.

Flips (left-right, up-down, both) keep the scan lines horizontal; 90 degree rotations are
left out on purpose: an unstable tip's streaks, line offsets and feedback ringing run along
the fast axis on every instrument, so a rotated image shows artefacts no STM makes, and
the small network would spend capacity on them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spm_bluesky.domain import processing

ANGSTROM = processing.ANGSTROM
#: Height range (1 to 99 %, after a plane fit) at which the added heights are as given.
REFERENCE_RANGE = 1.5 * ANGSTROM


@dataclass(frozen=True)
class Augmentation:
    """Ranges of the random changes (lengths in metres; probabilities per image)."""

    #: Window edge relative to :data:`~spm_bluesky.domain.processing.NETWORK_WINDOW` (random zoom).
    window_scale: tuple[float, float] = (0.8, 1.15)
    #: Crop edge relative to the frame when the frame is smaller than the window.
    crop: tuple[float, float] = (0.8, 1.0)
    #: Factor on all heights (apparent heights depend on bias, setpoint and the sample).
    contrast_log: tuple[float, float] = (0.75, 1.35)
    noise_probability: float = 0.5
    white_noise: float = 6e-12
    line_noise_probability: float = 0.5
    line_offset: float = 8e-12
    #: Sample slope before the plane fit (removed by it, as on the instrument).
    tilt: float = 0.03
    residue_probability: float = 0.5
    #: Largest height change a residual plane makes across the window.
    residue: float = 0.3 * ANGSTROM
    bow_probability: float = 0.3
    bow: float = 0.3 * ANGSTROM
    offset_probability: float = 0.5
    offset: float = 0.2 * ANGSTROM
    #: Scale the added heights by each window's own height range (see the module docstring).
    relative_heights: bool = False


def random_window(image: np.ndarray, scan_size_m: float, rng: np.random.Generator,
                  aug: Augmentation, pixels: int) -> np.ndarray:
    """A random window of a frame, resampled to ``pixels`` (float64, metres).

    Its edge is the network's window times a random scale, or a random crop of a frame
    smaller than that: the same pixel scale as :func:`spm_bluesky.domain.processing.frame_windows`
    gives in operation, give or take the zoom.
    """
    n = image.shape[0]
    edge_m = processing.NETWORK_WINDOW * rng.uniform(*aug.window_scale)
    if edge_m >= scan_size_m:
        edge_m = scan_size_m * rng.uniform(*aug.crop)
    edge = min(n, max(processing.MIN_PIXELS, round(n * edge_m / scan_size_m)))
    top, left = rng.integers(0, n - edge + 1, 2)
    return processing.resample(image[top:top + edge, left:left + edge], pixels)


def augment_batch(images: list[np.ndarray], scan_sizes: np.ndarray, rng: np.random.Generator,
                  aug: Augmentation | None = None,
                  pixels: int = processing.NETWORK_PIXELS) -> np.ndarray:
    """Augmented network inputs ``(n, pixels, pixels)`` float32: one random window per frame
    (heights in metres, edges ``scan_sizes`` in metres)."""
    aug = aug or Augmentation()
    n = len(images)
    stack = np.stack([random_window(np.asarray(im, np.float64), float(size), rng, aug, pixels)
                      for im, size in zip(images, scan_sizes, strict=True)])
    stack -= stack.mean(axis=(1, 2), keepdims=True)
    relative: np.ndarray | float = 1.0
    if aug.relative_heights:
        level = processing.subtract_plane_batch(stack).reshape(n, -1)
        span = np.quantile(level, 0.99, axis=1) - np.quantile(level, 0.01, axis=1)
        relative = np.minimum(span / REFERENCE_RANGE, 1.5)[:, None, None]
    low, high = np.log(aug.contrast_log)
    stack *= np.exp(rng.uniform(float(low), float(high), (n, 1, 1)))
    grid = (np.arange(pixels) + 0.5) / pixels - 0.5
    xx, yy = grid[None, None, :], grid[None, :, None]
    # The tilt is in height per frame edge: a 10 nm frame's slope times its size, roughly.
    slope = rng.uniform(-aug.tilt, aug.tilt, (2, n, 1, 1)) * 10e-9
    stack += slope[0] * xx + slope[1] * yy
    noisy = rng.random((n, 1, 1)) < aug.noise_probability
    stack += (noisy * relative * rng.uniform(0, aug.white_noise, (n, 1, 1))
              * rng.standard_normal(stack.shape))
    lines = rng.random((n, 1, 1)) < aug.line_noise_probability
    stack += (lines * relative * rng.uniform(0, aug.line_offset, (n, 1, 1))
              * rng.standard_normal((n, pixels, 1)))
    flat = processing.subtract_plane_batch(stack)
    residue = (rng.random((2, n, 1, 1)) < aug.residue_probability) * rng.uniform(
        -aug.residue, aug.residue, (2, n, 1, 1))
    flat += relative * (residue[0] * xx + residue[1] * yy)
    bow = (rng.random((2, n, 1, 1)) < aug.bow_probability) * rng.uniform(
        -aug.bow, aug.bow, (2, n, 1, 1))
    flat += 4 * relative * (bow[0] * xx**2 + bow[1] * yy**2)
    flat += relative * (rng.random((n, 1, 1)) < aug.offset_probability) * rng.uniform(
        -aug.offset, aug.offset, (n, 1, 1))
    out = processing.normalise(flat)
    flip = rng.integers(0, 4, n)
    out = np.where((flip & 1)[:, None, None] == 1, out[:, ::-1, :], out)
    out = np.where((flip & 2)[:, None, None] == 2, out[:, :, ::-1], out)
    return np.ascontiguousarray(out, dtype=np.float32)
