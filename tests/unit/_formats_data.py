"""The real STM files the format tests read, and a small synthetic Createc file.

The files under tests/data/formats come from PyPI source distributions (see SOURCES.md
there). The real Createc ``.dat`` has no such source: it is not in this repository and is
expected in the shared data folder beside the checkout (``<repo>/../shared/data/formats``,
placed by the steering repository); the tests that need it skip, naming that path, when it is
absent. The Createc error-path tests use :func:`synthetic_createc` instead, so they always run.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest

from spm_bluesky.formats.createc import HEADER_BYTES, MAGIC

_REPO = Path(__file__).resolve().parents[2]
DATA = _REPO / "tests" / "data" / "formats"
#: The shared data folder's formats directory (read-only; absent on most machines).
SHARED_FORMATS = _REPO.parent / "shared" / "data" / "formats"

SXM_GENERIC4 = DATA / "A151216.123306-02602.sxm"
SXM_GENERIC5 = DATA / "Au_mica_2023_Y_A_diPAMY_20230512_058.sxm"
GWY_GWYDDION = DATA / "test.gwy"
SXM_FILES = (SXM_GENERIC4, SXM_GENERIC5)
COMMITTED_FILES = (SXM_GENERIC4, SXM_GENERIC5, GWY_GWYDDION)

CREATEC_NAME = "A200619.213320.dat"
CREATEC_SOURCE = ("github.com/chenxu2394/py_createc examples/sample_data/A200619.213320.dat "
                  "at 91125c48362a0785db34671171bc10012761539a (MIT)")


def shared_data_file(name: str) -> Path | None:
    """``<repo>/../shared/data/formats/NAME`` if it is there, else None."""
    path = SHARED_FORMATS / name
    return path if path.is_file() else None


#: Where the real Createc file is expected (it may be absent: see :data:`needs_createc`).
CREATEC_CU111 = SHARED_FORMATS / CREATEC_NAME
HAVE_CREATEC = shared_data_file(CREATEC_NAME) is not None
CREATEC_MISSING = (f"the real Createc file is not at {CREATEC_CU111} (it is not in this "
                   f"repository; the steering repository places it there; source: "
                   f"{CREATEC_SOURCE})")
#: Mark for a test that reads the real Createc file.
needs_createc = pytest.mark.skipif(not HAVE_CREATEC, reason=CREATEC_MISSING)

#: The real files present here: the committed ones, and the Createc file when it is shared.
ALL_FILES = (*COMMITTED_FILES, CREATEC_CU111) if HAVE_CREATEC else COMMITTED_FILES


def real_file_params(*, createc: bool = True) -> list[object]:
    """Every real file as a ``pytest.param`` named by its file; the Createc file is always
    listed (with ``createc``) and skips, with the reason, when it is absent."""
    params: list[object] = [pytest.param(p, id=p.name) for p in COMMITTED_FILES]
    if createc:
        params.append(pytest.param(CREATEC_CU111, id=CREATEC_NAME, marks=needs_createc))
    return params


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
