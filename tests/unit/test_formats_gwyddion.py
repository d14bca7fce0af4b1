"""Gwyddion, the program STM users open files with, as the foreign consumer of every export.

Two checks per file: Gwyddion's own file modules (loaded through its libraries) see the
identical arrays and sizes, and ``gwyddion-thumbnailer`` renders the file. Both need the
Debian package ``gwyddion``, which ``.ci/run`` installs; without it these tests skip, saying so.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from spm_bluesky.formats import ScanFile, read_scan, write_gwy, write_sxm
from tests.unit._formats_data import (
    CREATEC_CU111,
    real_file_params,
    synthetic_createc,
)
from tests.unit._gwyddion import MISSING, gwyddion_load
from tests.unit.test_formats_roundtrip import acquired_like

THUMBNAILER = shutil.which("gwyddion-thumbnailer")
pytestmark = [
    pytest.mark.skipif(MISSING is not None, reason=MISSING or ""),
    pytest.mark.skipif(THUMBNAILER is None, reason="gwyddion-thumbnailer not installed "
                       "(apt-get install gwyddion)"),
]
_TITLE = re.compile(r"^(?P<channel>.*) \((?P<direction>[Ff]orward|[Bb]ackward)\)$")


def _key(title: str) -> tuple[str, str]:
    """``("Z", "forward")`` from ``"Z (Forward)"``; a title without a direction is forward."""
    match = _TITLE.match(title)
    return (match["channel"], match["direction"].lower()) if match else (title, "forward")


def _gwyddion_images(path: Path) -> dict[tuple[str, str], np.ndarray]:
    """Gwyddion's fields keyed like ours, rows turned to lowest y first."""
    images = {}
    for field in gwyddion_load(path):
        images[_key(field.title)] = field.data[::-1]
    return images


def _assert_gwyddion_sees(scan: ScanFile, path: Path, rtol: float = 0.0) -> None:
    fields = gwyddion_load(path)
    assert fields, f"Gwyddion found no image in {path}"
    assert (fields[0].xreal, fields[0].yreal) == pytest.approx(scan.size_m, rel=rtol or 1e-12)
    seen = _gwyddion_images(path)
    ours = {(i.channel, i.direction): i.data for i in scan.images}
    assert seen.keys() == ours.keys()
    for key, data in ours.items():
        if rtol:
            np.testing.assert_allclose(seen[key], data, rtol=rtol, err_msg=str(key))
        else:
            np.testing.assert_array_equal(seen[key].astype(np.float32), data, err_msg=str(key))
    units: dict[tuple[str, str], str] = {(i.channel, i.direction): i.unit for i in scan.images}
    for field in fields:
        unit = units[_key(field.title)]
        assert field.unit_z == ("" if unit == "counts" else unit)  # Gwyddion keeps SI units only


def _thumbnail(path: Path, tmp_path: Path) -> np.ndarray:
    from PIL import Image

    png = tmp_path / f"{path.name}.png"
    done = subprocess.run(
        [THUMBNAILER, "gnome2", "128", str(path), str(png)],  # type: ignore[list-item]
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr
    with Image.open(png) as image:
        return np.asarray(image)


@pytest.mark.parametrize("path", real_file_params(createc=False))
def test_gwyddion_reads_the_real_files_as_we_do(path: Path) -> None:
    _assert_gwyddion_sees(read_scan(path), path)


@pytest.mark.parametrize("path", [
    pytest.param(CREATEC_CU111, id="real"), "synthetic"])
def test_gwyddion_reads_the_createc_heights_as_we_do(path: Path | str, tmp_path: Path) -> None:
    """Gwyddion's createc module converts the DAC counts itself (in double precision)."""
    if path == "synthetic":
        path = synthetic_createc(tmp_path / "A230102.030405.dat")
    scan = read_scan(path)
    seen = _gwyddion_images_createc(Path(path))
    for direction in ("forward", "backward"):
        np.testing.assert_allclose(seen[direction], scan.image("Z", direction).data, rtol=1e-6)


def _gwyddion_images_createc(path: Path) -> dict[str, np.ndarray]:
    topography = [f for f in gwyddion_load(path) if f.title == "Topography"]
    assert len(topography) == 2
    return {"forward": topography[0].data[::-1], "backward": topography[1].data[::-1]}


@pytest.mark.parametrize("source", [*real_file_params(), "synthetic createc", "acquired"])
@pytest.mark.parametrize("fmt", ["sxm", "gwy"])
def test_gwyddion_opens_every_export(source: Path | str, fmt: str, tmp_path: Path) -> None:
    if source == "synthetic createc":
        source = synthetic_createc(tmp_path / "A230102.030405.dat")
    scan = acquired_like() if source == "acquired" else read_scan(source)
    writer = write_sxm if fmt == "sxm" else write_gwy
    out = writer(tmp_path / f"export.{fmt}", scan)
    _assert_gwyddion_sees(scan, out)
    thumbnail = _thumbnail(out, tmp_path)
    assert thumbnail.ndim == 3 and thumbnail.shape[0] > 0
    if source == "acquired":
        assert thumbnail.std() > 1, "Gwyddion rendered the frame as a flat image"


def test_gwyddion_refuses_garbage(tmp_path: Path) -> None:
    """The thumbnail check can fail: Gwyddion refuses a file it cannot read."""
    junk = tmp_path / "junk.sxm"
    junk.write_bytes(b"not an image")
    with pytest.raises(AssertionError):
        _thumbnail(junk, tmp_path)
