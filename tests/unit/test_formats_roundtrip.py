"""Write, read back: our readers and an independent one see the identical arrays and metadata."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import nanonispy2
import numpy as np
import pytest

from spm_bluesky.formats import (
    ScanFile,
    ScanImage,
    read_gwy,
    read_scan,
    read_sxm,
    write_gwy,
    write_sxm,
)
from tests.unit._formats_data import SXM_FILES, real_file_params, synthetic_createc

#: What "the same scan metadata" means across formats: everything but the file's own format,
#: its instrument name, and the channels' order (each format has its own).
SCAN_FIELDS = (
    "pixels", "size_m", "centre_m", "angle_deg", "bias_v", "setpoint", "setpoint_unit", "date",
    "scan_direction",
)


def _images(scan: ScanFile) -> dict[tuple[str, str], np.ndarray]:
    return {(i.channel, i.direction): i.data for i in scan.images}


def _assert_same(a: ScanFile, b: ScanFile) -> None:
    left, right = _images(a), _images(b)
    assert left.keys() == right.keys()
    for key, data in left.items():
        assert right[key].dtype == np.float32
        np.testing.assert_array_equal(right[key], data, err_msg=str(key))
    meta_a, meta_b = a.scan_metadata(), b.scan_metadata()
    assert {k: meta_b[k] for k in SCAN_FIELDS} == {k: meta_a[k] for k in SCAN_FIELDS}
    units_a = {(c["channel"], c["direction"]): c["unit"] for c in meta_a["channels"]}  # type: ignore[attr-defined]
    units_b = {(c["channel"], c["direction"]): c["unit"] for c in meta_b["channels"]}  # type: ignore[attr-defined]
    assert units_a == units_b


def acquired_like(n: int = 256, seed: int = 0) -> ScanFile:
    """A frame as the project acquires it: Z in metres, forward and backward, 256 px."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2e-11, (n, n)).astype(np.float32) + np.linspace(0, 2e-10, n, dtype=np.float32)
    return ScanFile(
        images=(
            ScanImage("Z", "forward", "m", z),
            ScanImage("Z", "backward", "m", z[:, ::-1] * 1.01),
        ),
        size_m=(3e-8, 3e-8),
        centre_m=(1.25e-7, -4.5e-8),
        angle_deg=12.5,
        bias_v=-1.2,
        setpoint=1e-10,
        date=datetime(2026, 1, 2, 3, 4, 5),
        scan_direction="down",
        instrument="spm-bluesky twin",
    )


@pytest.mark.parametrize("path", real_file_params())
def test_real_file_to_sxm_and_back(path: Path, tmp_path: Path) -> None:
    original = read_scan(path)
    back = read_sxm(write_sxm(tmp_path / "out.sxm", original))
    _assert_same(original, back)


@pytest.mark.parametrize("path", real_file_params())
def test_real_file_to_gwy_and_back(path: Path, tmp_path: Path) -> None:
    original = read_scan(path)
    back = read_gwy(write_gwy(tmp_path / "out.gwy", original))
    _assert_same(original, back)
    assert back.header == original.header


def test_createc_file_to_sxm_and_gwy_and_back(tmp_path: Path) -> None:
    """A Createc file (made here) through both writers: Z in metres, counts kept as counts."""
    original = read_scan(synthetic_createc(tmp_path / "A230102.030405.dat"))
    _assert_same(original, read_sxm(write_sxm(tmp_path / "out.sxm", original)))
    back = read_gwy(write_gwy(tmp_path / "out.gwy", original))
    _assert_same(original, back)
    assert back.header == original.header


@pytest.mark.parametrize("path", SXM_FILES, ids=lambda p: p.name)
def test_sxm_export_keeps_the_whole_header(path: Path, tmp_path: Path) -> None:
    original = read_sxm(path)
    back = read_sxm(write_sxm(tmp_path / "out.sxm", original))
    kept = {k: v for k, v in original.header.items() if k not in {"SCAN_RANGE", "SCAN_OFFSET",
            "SCAN_ANGLE", "BIAS", "Z-CONTROLLER", "DATA_INFO", "SCAN_PIXELS", "REC_DATE"}}
    assert {k: back.header[k] for k in kept} == kept


def _nanonispy2_view(path: Path) -> tuple[dict[tuple[str, str], np.ndarray], dict[str, object]]:
    """The images in our convention and the scan fields, as nanonispy2 reads them."""
    scan = nanonispy2.read.Scan(str(path))
    h = scan.header
    down = h["scan_dir"] == "down"
    images = {}
    for channel, by_direction in scan.signals.items():
        for direction, stored in by_direction.items():
            data = stored[:, ::-1] if direction == "backward" else stored
            images[(channel, direction)] = data[::-1] if down else data
    setpoint = h["z-controller"]["Setpoint"][0].split()[0]
    fields = {
        "pixels": [int(v) for v in h["scan_pixels"]],
        "size_m": [float(v) for v in h["scan_range"]],
        "centre_m": [float(v) for v in h["scan_offset"]],
        "angle_deg": float(h["scan_angle"]),
        "bias_v": float(h["bias"]),
        "setpoint": float(setpoint),
        "scan_direction": h["scan_dir"],
        "date": datetime.strptime(f"{h['rec_date']} {h['rec_time']}", "%d.%m.%Y %H:%M:%S"),
    }
    return images, fields


@pytest.mark.parametrize("source", [*SXM_FILES, "acquired"], ids=lambda p: getattr(p, "name", p))
def test_sxm_export_reads_identically_in_nanonispy2(source: Path | str, tmp_path: Path) -> None:
    scan = acquired_like() if source == "acquired" else read_scan(source)
    out = write_sxm(tmp_path / "export.sxm", scan)
    images, fields = _nanonispy2_view(out)
    ours = _images(scan)
    assert images.keys() == ours.keys()
    for key, data in ours.items():
        assert images[key].dtype.kind == "f" and images[key].dtype.itemsize == 4
        np.testing.assert_array_equal(images[key], data, err_msg=str(key))
    meta = scan.scan_metadata()
    assert fields["date"] == scan.date
    assert {k: v for k, v in fields.items() if k != "date"} == {
        k: meta[k] for k in fields if k != "date"
    }


def test_acquired_frame_round_trips_through_both_writers(tmp_path: Path) -> None:
    scan = acquired_like()
    _assert_same(scan, read_sxm(write_sxm(tmp_path / "a.sxm", scan)))
    _assert_same(scan, read_gwy(write_gwy(tmp_path / "a.gwy", scan)))


def test_sxm_to_gwy_to_sxm_keeps_arrays_and_metadata(tmp_path: Path) -> None:
    """A chain through both formats loses nothing that either carries."""
    for path in SXM_FILES:
        original = read_sxm(path)
        via_gwy = read_gwy(write_gwy(tmp_path / "x.gwy", original))
        _assert_same(original, read_sxm(write_sxm(tmp_path / "x.sxm", via_gwy)))


def test_writer_rejects_nothing_silently(tmp_path: Path) -> None:
    """A changed array must show: the round-trip comparison is not vacuous."""
    scan = acquired_like()
    out = read_sxm(write_sxm(tmp_path / "a.sxm", scan))
    tampered = out.replace(images=(ScanImage("Z", "forward", "m", out.images[0].data + 1e-12),
                                   *out.images[1:]))
    with pytest.raises(AssertionError):
        _assert_same(scan, tampered)
