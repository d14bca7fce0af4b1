"""Instrument noise families for synthetic frames (numpy, seeded).

Real noise depends on the instrument, so each frame draws its own mix, scaled to a total
level ``sigma`` (m): white noise, 1/f noise along the scan (rows are scanned one after the
other, so it is one time series), per-line offsets, one-pixel spikes, feedback ringing after
steep edges, slow banded offsets across lines, and piezo creep in the first lines. None of
them is a tip change: a good tip's frame carries them too.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.signal import lfilter

#: The families, in the order they are drawn.
NOISE_FAMILIES = ("white", "pink", "lines", "spikes", "ringing", "bands", "creep")


def _pink(length: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance 1/f noise of ``length`` samples (spectral shaping of white noise)."""
    spectrum = np.fft.rfft(rng.standard_normal(length))
    freq = np.fft.rfftfreq(length)
    freq[0] = freq[1]
    series = np.fft.irfft(spectrum / np.sqrt(freq), length)
    return series / (series.std() or 1.0)


def _ring(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Feedback ringing: each row's rises drive a damped oscillator along the fast axis."""
    period = rng.uniform(3, 15)
    damping = math.exp(-1 / rng.uniform(2, 10))
    omega = 2 * math.pi / period
    a = [1.0, -2 * damping * math.cos(omega), damping**2]
    drive = np.diff(image, axis=1, prepend=image[:, :1])
    return np.asarray(lfilter([1.0, -1.0], a, drive, axis=1))


def add_noise(image: np.ndarray, sigma: float, rng: np.random.Generator) -> tuple[np.ndarray,
                                                                                   list[str]]:
    """``image`` plus a random mix of the noise families at total level ``sigma`` (m);
    returns the noisy image and the families drawn."""
    rows, cols = image.shape
    out = image.astype(np.float64).copy()
    drawn = ["white"]
    out += sigma * rng.uniform(0.2, 1.0) * rng.standard_normal((rows, cols))
    if rng.random() < 0.6:
        drawn.append("pink")
        out += sigma * rng.uniform(0.2, 1.0) * _pink(rows * cols, rng).reshape(rows, cols)
    if rng.random() < 0.6:
        drawn.append("lines")
        out += sigma * rng.uniform(0.2, 1.0) * rng.standard_normal((rows, 1))
    if rng.random() < 0.3:
        drawn.append("spikes")
        count = int(rng.integers(1, 12))
        r, c = rng.integers(0, rows, count), rng.integers(0, cols, count)
        out[r, c] += sigma * rng.uniform(5, 30, count) * rng.choice([-1.0, 1.0], count)
    if rng.random() < 0.3:
        drawn.append("ringing")
        out += rng.uniform(0.05, 0.3) * _ring(image, rng)
    if rng.random() < 0.3:
        drawn.append("bands")
        walk = gaussian_filter1d(rng.standard_normal(rows), rng.uniform(3, 20), mode="nearest")
        out += sigma * rng.uniform(1, 5) * (walk / (walk.std() or 1.0))[:, None]
    if rng.random() < 0.3:
        drawn.append("creep")
        tau = rows * rng.uniform(0.05, 0.3)
        out += (sigma * rng.uniform(3, 20) * rng.choice([-1.0, 1.0])
                * np.exp(-np.arange(rows) / tau))[:, None]
    return out, drawn
