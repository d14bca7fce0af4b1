"""Constant-current topography: what the z feedback records as the tip crosses the sample.

With several apexes, the current is a weighted sum over apexes,
``I ~ sum_k w_k exp(2 kappa (h(r + d_k) - dz_k - z))``, so the feedback height is a soft
maximum (log-sum-exp) of the shifted height maps: ghost copies of every feature. A blunt
apex convolves the surface with a wider Gaussian; an adsorbate changes molecular contrast.
Instrument effects follow: feedback overshoot along the fast axis, noise, line offsets, tilt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.special import erf

from spm_bluesky.twin.config import NoiseConfig, TipConfig
from spm_bluesky.twin.sample import Features, SurfacePatch, Terraces
from spm_bluesky.twin.tip import TipState

#: Gaussian blur of the surface per metre of apex radius.
BLUR_PER_RADIUS = 0.6


@dataclass(frozen=True)
class Frame:
    """Where and how one frame is scanned (area-local metres, SI units)."""

    center_x: float = 0.0
    center_y: float = 0.0
    size: float = 10e-9
    pixels: int = 64
    speed: float = 80e-9
    bias: float = 1.0
    setpoint: float = 25e-12

    @property
    def pixel_size(self) -> float:
        """Distance between pixel centres (m)."""
        return self.size / self.pixels

    @property
    def line_time(self) -> float:
        """Trace plus retrace of one line (s)."""
        return 2 * self.size / self.speed

    @property
    def duration(self) -> float:
        """Time to scan the whole frame (s)."""
        return self.pixels * self.line_time

    def axes(self) -> tuple[np.ndarray, np.ndarray]:
        """Pixel-centre coordinates along x (fast axis) and y (slow axis)."""
        offsets = (np.arange(self.pixels) - (self.pixels - 1) / 2) * self.pixel_size
        return self.center_x + offsets, self.center_y + offsets


def gaussian_sum(features: Features, xs: np.ndarray, ys: np.ndarray, blur: float,
                 gain: float | np.ndarray = 1.0) -> np.ndarray:
    """Sum of Gaussians (each convolved with a Gaussian of width ``blur``) on a grid.

    ``gain`` scales the amplitudes (one value, or one per feature). Separable:
    ``G_y diag(a) G_x`` costs one small matrix product.
    """
    if len(features) == 0:
        return np.zeros((len(ys), len(xs)))
    var = features.sigma**2 + blur**2
    amp = (gain * features.amp * features.sigma**2 / var).astype(np.float32)
    # Offsets are taken in float64 (positions span the whole area), the rest in float32:
    # relative 1e-7 of a few nm is far below the noise, and exp and matmul run twice as fast.
    scale = (-0.5 / var).astype(np.float32)
    dx = (xs[None, :] - features.x[:, None]).astype(np.float32)
    dy = (ys[:, None] - features.y[None, :]).astype(np.float32)
    gx = np.exp(dx * dx * scale[:, None])
    gy = np.exp(dy * dy * scale[None, :])
    return ((gy * amp) @ gx).astype(np.float64)


def steps(terraces: Terraces, xs: np.ndarray, ys: np.ndarray, blur: float,
          step_height: float) -> np.ndarray:
    """Terrace heights on a grid, each step edge smoothed by the tip's blur."""
    level = terraces.level(xs[None, :], ys[:, None])
    nearest = np.rint(level)
    distance = (level - nearest) * terraces.width
    width = max(blur, 0.05e-9) * math.sqrt(2)
    edge = np.where(distance > 0, 1.0, 0.0)
    near = np.abs(distance) < 4 * width  # erf is saturated elsewhere: skip it there
    if near.any():
        edge[near] = 0.5 * (1 + erf(distance[near] / width))
    return step_height * (nearest - 1 + edge)


def surface(patch: SurfacePatch, terraces: Terraces, tip: TipState, xs: np.ndarray,
            ys: np.ndarray, step_height: float) -> np.ndarray:
    """What one apex of radius ``tip.radius`` sees: the blurred surface, with adsorbate contrast."""
    blur = BLUR_PER_RADIUS * tip.radius
    heights = steps(terraces, xs, ys, blur, step_height)
    if tip.adsorbate is None:
        return heights + gaussian_sum(patch.features, xs, ys, blur)
    lobe_gain, centre_gain = tip.adsorbate.gains
    gains = np.array([lobe_gain, centre_gain, 1.0])[patch.kind]  # indexed by FeatureKind
    return heights + gaussian_sum(patch.features, xs, ys, blur, gains)


def topography(patch: SurfacePatch, terraces: Terraces, tip: TipState, xs: np.ndarray,
               ys: np.ndarray, step_height: float, config: TipConfig) -> np.ndarray:
    """Feedback height for a tip with one or more apexes (log-sum-exp over apexes)."""
    main = surface(patch, terraces, tip, xs, ys, step_height)
    if len(tip.apexes) == 1:
        return main + tip.length
    two_kappa = 2 * config.kappa
    layers = [main]
    weights = [1.0]
    for apex in tip.apexes[1:]:
        layers.append(surface(patch, terraces, tip, xs + apex.dx, ys + apex.dy, step_height)
                      - apex.dz)
        weights.append(apex.weight)
    stack = np.stack(layers)
    top = stack.max(axis=0)
    total = np.tensordot(np.asarray(weights), np.exp(two_kappa * (stack - top)), axes=1)
    return top + np.log(total) / two_kappa + tip.length


def feedback_response(image: np.ndarray, pixel_time: float, config: NoiseConfig) -> np.ndarray:
    """Second-order feedback along each line (fast axis): lag and overshoot at edges."""
    omega = 2 * math.pi * config.feedback_frequency * pixel_time
    if omega > 3.0:  # the loop settles within a pixel: nothing to see
        return image
    from scipy.signal import lfilter  # here: importing scipy.signal costs ~1 CPU s a process

    b, a, zi = _feedback_filter(round(omega, 6), config.feedback_damping)
    out, _ = lfilter(b, a, image, axis=1, zi=zi[None, :] * image[:, :1])
    return out


@lru_cache(maxsize=256)
def _feedback_filter(omega: float, zeta: float) -> tuple[list[float], list[float], np.ndarray]:
    """Unit-gain second-order low-pass (b, a) and its steady-state initial condition."""
    r = math.exp(-zeta * omega)
    a = [1.0, -2 * r * math.cos(omega * math.sqrt(1 - zeta**2)), r * r]
    b = [sum(a)]
    from scipy.signal import lfilter_zi  # here: see feedback_response

    return b, a, lfilter_zi(b, a)


def add_noise(image: np.ndarray, rng: np.random.Generator, config: NoiseConfig,
              scale: float = 1.0) -> np.ndarray:
    """White noise, noise correlated along the fast axis, and per-line offsets."""
    from scipy.signal import lfilter  # here: see feedback_response

    rows, cols = image.shape
    rho = config.fast_axis_correlation
    drive, white = rng.standard_normal((2, rows, cols), dtype=np.float32)
    correlated = lfilter([config.fast_axis * math.sqrt(1 - rho * rho) * scale], [1.0, -rho],
                         drive, axis=1)
    offsets = rng.standard_normal((rows, 1)) * (config.line_offset * scale)
    return image + correlated + white * (config.white * scale) + offsets


def shift_rows(image: np.ndarray, shifts_px: np.ndarray, margin: int) -> np.ndarray:
    """Sample each row at its own fractional x shift (drift within a frame).

    ``image`` has ``margin`` extra columns on each side; the result drops them.
    """
    rows, cols = image.shape
    width = cols - 2 * margin
    position = np.arange(width)[None, :] + margin + np.clip(shifts_px, -margin, margin)[:, None]
    left = np.clip(np.floor(position).astype(int), 0, cols - 2)
    frac = position - left
    row_index = np.arange(rows)[:, None]
    return image[row_index, left] * (1 - frac) + image[row_index, left + 1] * frac
