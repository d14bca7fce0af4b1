"""Helpers for twin tests: instruments on controlled surfaces and tips of known kinds."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from spm_bluesky.twin import Apex, Instrument, SampleConfig, TipState, TwinConfig
from spm_bluesky.twin.tip import MAIN_APEX


def molecule_field(seed: int = 0, coverage: float = 0.15, **noise) -> Instrument:
    """An instrument over a flat, clean, molecule-rich surface (no steps, debris or roughness)."""
    sample = SampleConfig(coverage=coverage, debris_probability=0.0, rough_probability=0.0,
                          terrace_width=1e-3)
    config = TwinConfig(sample=sample)
    if noise:
        config = replace(config, noise=replace(config.noise, **noise))
    instrument = Instrument(seed, config)
    instrument.set_tip(good(instrument))
    return instrument


def good(instrument: Instrument) -> TipState:
    """A stable, sharp, single-apex tip."""
    return TipState(radius=0.25e-9, instability=0.0)


def two_apex(dx: float, dy: float, weight: float = 1.0) -> TipState:
    """A stable double tip: a second equal apex at (dx, dy) from the main one."""
    return TipState(apexes=(MAIN_APEX, Apex(dx, dy, weight, 0.0)), radius=0.25e-9,
                    instability=0.0)


def centred_power(image: np.ndarray) -> np.ndarray:
    """2-D power spectrum of the mean-free image, zero frequency in the middle."""
    flat = image - image.mean()
    return np.fft.fftshift(np.abs(np.fft.fft2(flat)) ** 2)


def autocorrelation(image: np.ndarray) -> np.ndarray:
    """Circular autocorrelation, normalised to 1 at zero shift, zero shift in the middle."""
    flat = image - image.mean()
    spectrum = np.abs(np.fft.fft2(flat)) ** 2
    corr = np.fft.fftshift(np.real(np.fft.ifft2(spectrum)))
    return corr / corr.max()
