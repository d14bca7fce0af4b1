"""Tip effects on a synthetic topography, as real ones look (numpy, seeded).

- good: a sharp apex, a Gaussian of 0.05 to 0.2 nm;
- multi_apex: one or two ghost apexes 0.3 to 3 nm away, each imaging a shifted copy,
  combined as the highest apex (``max``, what a rigid double tip does) or as a sum;
- blunt: a broad apex, a Gaussian of 0.4 to 1.5 nm (at least 1.2 px, so it shows);
- adsorbate: changed contrast: molecules as depressions (where the caller says inversion
  shows: on isolated molecules, not on periodic layers), or round blobs that hide the
  inner structure (no dark halos: a good tip shows those around scatterers of standing
  waves);
- unstable: tip changes during the scan, applied after the instrument noise (see
  :func:`tip_changes`): single bright or dark lines followed by feedback ringing, partial
  streaks, blocks of shifted or differently imaged lines (the twin's kind), lasting height
  jumps and flicker. Several per frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.ndimage import shift as shift_image


def _blur(heights: np.ndarray, sigma_nm: float, pixel_nm: float) -> np.ndarray:
    return gaussian_filter(heights, sigma_nm / pixel_nm, mode="nearest")


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def good(heights: np.ndarray, pixel_nm: float, rng: np.random.Generator) -> np.ndarray:
    """A sharp single apex."""
    return _blur(heights, _log_uniform(rng, 0.05, 0.2), pixel_nm)


@dataclass(frozen=True)
class Ghosts:
    """A multi-apex tip's image, the single apex's image under it, and where the ghosts sit."""

    image: np.ndarray
    sharp: np.ndarray
    #: Each ghost's shift (rows, columns) in pixels.
    offsets: tuple[tuple[float, float], ...]


def multi_apex(heights: np.ndarray, pixel_nm: float, rng: np.random.Generator) -> np.ndarray:
    """One or two ghost apexes: shifted copies, as the highest apex or summed."""
    return multi_apex_ghosts(heights, pixel_nm, rng).image


def multi_apex_ghosts(heights: np.ndarray, pixel_nm: float, rng: np.random.Generator
                      ) -> Ghosts:
    """:func:`multi_apex`, with the single apex's image and the ghosts' shifts."""
    sharp = good(heights, pixel_nm, rng)
    out = sharp.copy()
    combine_max = rng.random() < 0.5
    span = np.ptp(sharp) or 1.0
    offsets = []
    for _ in range(1 + int(rng.random() < 0.3)):
        distance = max(_log_uniform(rng, 0.3, 3.0), 1.5 * pixel_nm)
        angle = rng.uniform(0, 2 * math.pi)
        offset = (distance * math.sin(angle) / pixel_nm, distance * math.cos(angle) / pixel_nm)
        offsets.append(offset)
        ghost = shift_image(sharp, offset, order=1, mode="nearest")
        weight = rng.uniform(0.5, 1.0)
        if combine_max:
            out = np.maximum(out, weight * ghost - rng.uniform(0.0, 0.3) * span)
        else:
            out = out + weight * ghost
    return Ghosts(out, sharp, tuple(offsets))


def ghost_visibility(ghosts: Ghosts) -> float:
    """How plainly the ghosts show: over the ghosts' shifts, the largest rise of the image's
    autocorrelation at that shift above the single apex's.

    Every feature doubled at one shift is what a person sees of a double tip, and what the
    autocorrelation measures there (about w / (1 + w^2), 0.4 to 0.5, for isolated features
    and a ghost of weight w). A ghost of a periodic pattern, or one closer than the features'
    own size, changes the autocorrelation little: the image is then one a good tip could
    give, and no one could label it multi_apex.
    """
    return max(_correlation_at(ghosts.image, offset) - _correlation_at(ghosts.sharp, offset)
               for offset in ghosts.offsets)


def _correlation_at(image: np.ndarray, offset: tuple[float, float]) -> float:
    """Pearson correlation of ``image`` with itself shifted by ``offset`` (px), on the part
    that both cover."""
    margin = math.ceil(max(abs(offset[0]), abs(offset[1]))) + 1
    if 2 * margin >= min(image.shape) - 2:
        return 0.0
    shifted = shift_image(image, offset, order=1, mode="nearest")
    a = image[margin:-margin, margin:-margin].ravel()
    b = shifted[margin:-margin, margin:-margin].ravel()
    a, b = a - a.mean(), b - b.mean()
    norm = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / norm if norm > 0 else 0.0


def blunt(heights: np.ndarray, pixel_nm: float, rng: np.random.Generator) -> np.ndarray:
    """A broad apex: a wide Gaussian blur."""
    return _blur(heights, max(_log_uniform(rng, 0.4, 1.5), 1.2 * pixel_nm), pixel_nm)


def adsorbate(heights: np.ndarray, pixel_nm: float, rng: np.random.Generator,
              invert: bool = True) -> np.ndarray:
    """Changed contrast: inverted molecules (only if ``invert``), or structureless round
    blobs."""
    sharp = good(heights, pixel_nm, rng)
    base = np.quantile(sharp, 0.3)
    if rng.random() < 0.4 and invert:  # molecules appear as depressions
        return base - rng.uniform(0.5, 1.0) * (sharp - base)
    blob = _blur(sharp, rng.uniform(0.25, 0.5), pixel_nm)
    top = np.quantile(blob, 0.99) - base or 1.0
    return base + top * np.clip((blob - base) / top, 0, None) ** rng.uniform(0.3, 0.6)


TIPS = {"good": good, "multi_apex": multi_apex, "blunt": blunt, "adsorbate": adsorbate,
        "unstable": good}


def _ringing(length: int, rng: np.random.Generator) -> np.ndarray:
    """A feedback loop's damped oscillation after a jump, along the fast axis (relative)."""
    t = np.arange(length)
    period = rng.uniform(3, 20)
    decay = rng.uniform(2, 25)
    return rng.uniform(0.0, 0.8) * np.exp(-t / decay) * np.cos(2 * math.pi * t / period)


def tip_changes(image: np.ndarray, corrugation: float, noise: float,
                pixel_nm: float, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """An unstable tip's frame: 1 to 25 tip-change events; returns the image and the count.

    An event's height is at least five times the noise and, often, a fraction of the
    corrugation, so it shows as an expert sees it.
    """
    out = image.copy()
    rows, cols = out.shape
    events = max(1, round(_log_uniform(rng, 1.0, 25.0)))
    for _ in range(events):
        amplitude = max(noise * _log_uniform(rng, 5.0, 40.0),
                        corrugation * _log_uniform(rng, 0.08, 1.2)) * rng.choice([-1.0, 1.0])
        row = int(rng.integers(rows))
        kind = rng.random()
        if kind < 0.4:  # a single line (or its tail) off, then ringing
            start = 0 if rng.random() < 0.5 else int(rng.integers(cols - 2))
            profile = np.ones(cols - start)
            profile += _ringing(cols - start, rng)
            if rng.random() < 0.5:  # the tip comes back before the line ends
                profile *= np.exp(-np.arange(cols - start) / rng.uniform(3, cols))
            out[row, start:] += amplitude * profile
        elif kind < 0.6:  # a streak across part of one to three lines
            width = int(rng.integers(1, 4))
            start = int(rng.integers(cols - 2))
            stop = int(rng.integers(start + 2, cols + 1))
            out[row:row + width, start:stop] += amplitude
        elif kind < 0.8:  # a block of lines imaged by another tip (the twin's kind)
            height = int(rng.integers(2, max(3, rows // 6)))
            block = out[row:row + height]
            if rng.random() < 0.5:
                block = gaussian_filter(block, rng.uniform(0.3, 1.0) / pixel_nm)
            out[row:row + height] = block + amplitude
        elif kind < 0.9:  # a lasting jump: every later line is off
            out[row:] += amplitude
            out[row, :] += amplitude * _ringing(cols, rng)
        else:  # flicker: noisy lines
            height = int(rng.integers(1, 6))
            out[row:row + height] += (abs(amplitude) * rng.uniform(0.3, 1.0)
                                      * rng.standard_normal((len(out[row:row + height]), cols)))
    return out, events
