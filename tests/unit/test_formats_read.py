"""Real STM files, read by our readers and checked against independent readers and physics."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import gwyfile
import nanonispy2
import numpy as np
import pytest
from gwyfile.util import get_datafields
from scipy.ndimage import gaussian_filter1d
from scipy.signal import find_peaks

from spm_bluesky.formats import ScanFile, file_sha256, read_scan
from tests.unit._formats_data import (
    ALL_FILES,
    CREATEC_CU111,
    GWY_GWYDDION,
    SXM_FILES,
    SXM_GENERIC4,
    SXM_GENERIC5,
    real_file_params,
    synthetic_createc,
)

CU111_STEP_A = 2.08  # monatomic step of Cu(111): a / sqrt(3), a = 3.615 A


@pytest.mark.parametrize("path", real_file_params())
def test_every_real_file_imports(path: Path) -> None:
    scan = read_scan(path)
    assert isinstance(scan, ScanFile)
    assert scan.sha256 == file_sha256(path) and scan.source == str(path)
    assert scan.header or path.suffix == ".gwy", "the file's header is kept"
    nx, ny = scan.pixels
    assert nx > 0 and ny > 0 and all(s > 0 for s in scan.size_m)
    for image in scan.images:
        assert image.data.dtype == np.float32 and image.data.shape == (ny, nx)


def test_sxm_generations_and_scan_fields() -> None:
    g4, g5 = read_scan(SXM_GENERIC4), read_scan(SXM_GENERIC5)
    assert g4.instrument == "Nanonis Generic 4" and g5.instrument == "Nanonis Generic 5"
    assert g4.pixels == (128, 128) and g4.size_m == (2e-9, 2e-9)
    assert g4.centre_m == (-3.335099e-7, -3.124986e-7) and g4.scan_direction == "up"
    assert (g4.bias_v, g4.setpoint, g4.setpoint_unit) == (-9e-4, 5e-11, "A")
    assert g4.date == datetime(2015, 12, 16, 11, 39, 44)
    assert g5.pixels == (256, 256) and g5.size_m == (4e-9, 4e-9)
    assert g5.angle_deg == 120.0 and g5.scan_direction == "down"
    assert g5.centre_m == (9.964751e-8, -5.581927e-8)
    assert (g5.bias_v, g5.setpoint, g5.setpoint_unit) == (-0.05, 2.5e-11, "A")
    assert g5.date == datetime(2023, 5, 12, 13, 50, 59)
    assert g5.channels == ("Z", "Current")
    assert [i.direction for i in g5.images] == ["forward", "backward"] * 2


@pytest.mark.parametrize("path", SXM_FILES, ids=lambda p: p.name)
def test_sxm_arrays_equal_nanonispy2(path: Path) -> None:
    """nanonispy2 returns the images in stored order: lines as acquired, backward right to left."""
    ours = read_scan(path)
    theirs = nanonispy2.read.Scan(str(path))
    assert list(theirs.signals) == list(ours.channels)
    down = ours.scan_direction == "down"
    for image in ours.images:
        stored = image.data[::-1] if down else image.data
        stored = stored[:, ::-1] if image.direction == "backward" else stored
        np.testing.assert_array_equal(stored, theirs.signals[image.channel][image.direction])
    assert tuple(theirs.header["scan_range"]) == ours.size_m
    assert tuple(theirs.header["scan_offset"]) == ours.centre_m
    assert tuple(theirs.header["scan_pixels"]) == ours.pixels
    assert theirs.header["bias"] == ours.bias_v


def test_gwy_equals_gwyfile_with_gwyddions_row_order() -> None:
    ours = read_scan(GWY_GWYDDION)
    fields = get_datafields(gwyfile.load(str(GWY_GWYDDION)))
    assert ours.channels == tuple(fields)
    field = fields["Test"]
    np.testing.assert_array_equal(ours.image("Test").data, field.data[::-1].astype(np.float32))
    assert ours.size_m == (field.xreal, field.yreal)


def test_createc_layout_and_units_on_a_synthetic_file(tmp_path: Path) -> None:
    """The reader against the format's description, on a file made here: line order turned,
    Z counts through DAC range, piezo constant and gain to metres, the rest raw counts."""
    import zlib

    path = synthetic_createc(tmp_path / "A230102.030405.dat", nx=24, ny=16, scanned=12)
    counts = np.frombuffer(zlib.decompress(path.read_bytes()[16384:]), "<f4")[1:]
    stored = counts.reshape(4, 16, 24)
    scan = read_scan(path)
    assert scan.format == "createc-dat" and scan.instrument == "Createc STMAFM"
    assert scan.pixels == (24, 16) and scan.size_m == pytest.approx((200e-10, 150e-10))
    assert scan.bias_v == pytest.approx(0.25) and scan.setpoint == pytest.approx(1.5e-10)
    assert scan.date == datetime(2023, 1, 2, 3, 4, 5)
    assert [(i.channel, i.direction, i.unit) for i in scan.images] == [
        ("Z", "forward", "m"), ("Current", "forward", "counts"),
        ("Z", "backward", "m"), ("Current", "backward", "counts")]
    z_per_count = 20 / 2**20 * 10.0 * 3 * 1e-10
    np.testing.assert_allclose(scan.image("Z").data, stored[0][::-1] * z_per_count, rtol=1e-6)
    np.testing.assert_array_equal(scan.image("Current", "backward").data, stored[3][::-1])
    assert not scan.image("Z").data[:4].any() and scan.image("Z").data[4:].all()
    assert scan.centre_m == pytest.approx((100 * 20 / 2**20 * 1e-10 * 10 * 30.0,
                                           -50 * 20 / 2**20 * 1e-10 * 10 * 30.0))


def test_createc_header_constants() -> None:
    scan = read_scan(CREATEC_CU111)
    assert scan.instrument.startswith("Createc")
    assert "Cu(111)" in scan.header["ActDriveDir"]
    assert scan.pixels == (512, 512)
    assert scan.size_m == pytest.approx((861.0262e-10, 861.0262e-10))
    assert scan.bias_v == pytest.approx(0.1) and scan.setpoint == pytest.approx(6.9e-11)
    assert scan.date == datetime(2020, 6, 19, 21, 33, 20)
    assert scan.image("Z").unit == "m" and scan.image("Z", "backward").unit == "m"


def _terrace_spacing(z: np.ndarray) -> float:
    """First estimate of the step height: spacing of the height histogram's terrace peaks
    in horizontal bands, after removing the median slope (the terraces' tilt)."""
    ny, nx = z.shape
    yy, xx = np.mgrid[:ny, :nx]
    flat = z - np.median(np.diff(z, axis=1)) * xx - np.median(np.diff(z, axis=0)) * yy
    spacings: list[float] = []
    for top in range(0, ny - 32, 32):
        band = flat[top : top + 32]
        counts, edges = np.histogram(band, bins=np.arange(band.min(), band.max() + 0.05, 0.05))
        smooth = gaussian_filter1d(counts.astype(float), 2)
        peaks, _ = find_peaks(smooth, prominence=smooth.max() * 0.1, distance=15)
        spacings += list(np.diff(edges[peaks]))
    return float(np.median(spacings))


def _fit_step_height(z: np.ndarray, first_guess: float) -> float:
    """Least-squares terrace model z = a x + b y + c + h * k over the flat pixels, k the
    terrace index (heights rounded in units of h, from the terraces' common phase), iterated
    from ``first_guess``: returns h."""
    ny, nx = z.shape
    yy, xx = np.mgrid[:ny, :nx].astype(float)
    slope_x, slope_y = np.median(np.diff(z, axis=1)), np.median(np.diff(z, axis=0))
    step = first_guess
    for _ in range(40):
        levelled = z - slope_x * xx - slope_y * yy
        edge = np.abs(np.gradient(levelled, axis=1)) + np.abs(np.gradient(levelled, axis=0))
        flat = edge < 0.3
        phase = np.angle(np.mean(np.exp(2j * np.pi * levelled[flat] / step))) * step / (2 * np.pi)
        terrace = np.round((levelled - phase) / step)
        design = np.c_[xx[flat], yy[flat], np.ones(flat.sum()), terrace[flat]]
        (slope_x, slope_y, _, step), *_ = np.linalg.lstsq(design, z[flat], rcond=None)
    return abs(float(step))


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_createc_cu111_steps_are_monatomic(direction: str) -> None:
    """Heights from the DAC counts through the header's gain and piezo constant give the
    monatomic step of Cu(111); a wrong constant (e.g. GainZ ignored) would give 0.7 A."""
    z = read_scan(CREATEC_CU111).image("Z", direction).data.astype(float) * 1e10  # type: ignore[arg-type]
    z = z[np.any(z != 0, axis=1)]  # lines not yet scanned are stored as 0
    assert z.shape[0] > 200
    guess = _terrace_spacing(z)
    assert 1.5 < guess < 2.5, f"terrace spacing {guess:.2f} A"
    step = _fit_step_height(z, guess)
    assert step == pytest.approx(CU111_STEP_A, abs=0.15), f"step {step:.3f} A"


def test_every_committed_file_is_cited_with_its_sha256() -> None:
    """Provenance: each data file here is named in SOURCES.md with its sha256 and in NOTICE."""
    data = SXM_GENERIC4.parent
    sources = (data / "SOURCES.md").read_text()
    notice = (data.parents[2] / "NOTICE").read_text()
    files = sorted(p for p in data.iterdir() if p.name != "SOURCES.md")
    assert files == sorted(ALL_FILES)
    for path in files:
        assert f"`{path.name}` ({path.stat().st_size:,} B".replace(",", " ") in sources, path
        assert file_sha256(path) in sources and path.name in notice, path
