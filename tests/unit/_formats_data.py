"""The real STM files the format tests read, and a small synthetic Createc file.

The files under tests/data/formats come from PyPI source distributions and, for the real
Createc ``.dat``, from a public repository (see SOURCES.md there). The Createc error-path tests
use :func:`synthetic_createc`, a file made after the format's description.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest

from spm_bluesky.formats.createc import HEADER_BYTES, MAGIC

_REPO = Path(__file__).resolve().parents[2]
DATA = _REPO / "tests" / "data" / "formats"

SXM_GENERIC4 = DATA / "A151216.123306-02602.sxm"
SXM_GENERIC5 = DATA / "Au_mica_2023_Y_A_diPAMY_20230512_058.sxm"
GWY_GWYDDION = DATA / "test.gwy"
#: A Createc LT-STM frame on Cu(111) (py_createc's sample data, MIT).
CREATEC_CU111 = DATA / "A200619.213320.dat"
SXM_FILES = (SXM_GENERIC4, SXM_GENERIC5)
ALL_FILES = (SXM_GENERIC4, SXM_GENERIC5, GWY_GWYDDION, CREATEC_CU111)


def real_file_params(*, createc: bool = True) -> list[object]:
    """Every real file as a ``pytest.param`` named by its file (without the Createc file
    unless ``createc``)."""
    return [pytest.param(p, id=p.name) for p in ALL_FILES if createc or p != CREATEC_CU111]


def synthetic_createc(path: Path, nx: int = 24, ny: int = 16, seed: int = 0,
                      scanned: int | None = None) -> Path:
    """Write a small Createc ``.dat`` after the layout in :mod:`spm_bluesky.formats.createc`:
    a 16 KiB ``[Paramco32]`` header ending in ``DATA``, then a zlib stream of float32: one
    leading value and Z and Current, forward then backward, ``ny`` lines of ``nx`` counts
    (top line first; lines from ``scanned`` on left at 0). Heights: 1 count = 20 V / 2**20
    x 10 A/V x 3 (gain) = 5.72 pm."""
    rng = np.random.default_rng(seed)
    volts_per_count = 20 / 2**20
    header = {
        "DAC-Type": "20bit", "Titel / Titel": "synthetic test image",
        "Delta X / Delta X [Dac]": 16, "Delta Y / Delta Y [Dac]": 16,
        "Num.X / Num.X": nx, "Num.Y / Num.Y": ny, "GainX / GainX": 10, "GainY / GainY": 10,
        "GainZ / GainZ": 3, "Rotation / Rotation": "0.00", "BiasVoltage / BiasVolt.[mV]": 250.0,
        "Chan(1,2,4) / Chan(1,2,4)": 2, "Scanrotoffx / OffsetX": 100,
        "Scanrotoffy / OffsetY": -50, "Channels / Channels": 4,
        "Channelselectval / Channelselectval": 3, "Dacto[A]xy": volts_per_count * 30.0,
        "Dacto[A]z": volts_per_count * 10.0, "Length x[A]": 200.0, "Length y[A]": 150.0,
        "Current[A]": 1.5e-10, "ZPiezoconst": 10.0, "Xpiezoconst": 30.0,
        "YPiezoconst": 30.0, "ActDriveDir": "synthetic",
    }
    text = "\r\n".join(f"{key}={value}" for key, value in header.items()) + "\r\n"
    head = (MAGIC + b"\r\n" + text.encode("latin-1")).ljust(HEADER_BYTES - 5, b"\0")
    head += b"\nDATA"
    images = rng.normal(0, 50, size=(4, ny, nx)).astype("<f4")
    images[0] += np.arange(nx, dtype="<f4") * 20  # a slope along x: orientation is testable
    if scanned is not None:
        images[:, scanned:] = 0
    data = np.concatenate([np.array([0.0], "<f4"), images.ravel()])
    path.write_bytes(head + zlib.compress(data.tobytes()))
    return path
