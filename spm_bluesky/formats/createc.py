"""Createc ``.dat`` images (``[Paramco32]``, the compressed format of STMAFM 4): read only.

The layout: a 16 KiB text header of ``Key / Label=Value`` lines, ending in ``DATA``; then a
zlib stream of little-endian float32: one leading value, then the images one after the other
(the selected channels of the forward direction, then, when the scan records both, of the
backward direction), each ``Num.Y`` lines of ``Num.X`` raw DAC counts, lines not yet scanned
left at 0. The top line comes first and backward lines run left to right already, so only
the line order is turned to the package convention (lowest y first).

Heights in metres come from the counts with the header's constants: the DAC's volts per
count (a ±10 V range over ``DAC-Type`` bits), the Z piezo constant (``ZPiezoconst``, Å/V)
and the high-voltage gain (``GainZ``). Lateral sizes are the header's ``Length x[A]`` and
``Length y[A]``; the centre is the scan offset (DAC counts) through ``Xpiezoconst`` and
``GainX``. Channels other than Z keep their raw counts (unit ``counts``).
"""

from __future__ import annotations

import re
import zlib
from datetime import datetime
from pathlib import Path

import numpy as np

from ._model import ScanFile, ScanFormatError, ScanImage, file_sha256

FORMAT = "createc-dat"
MAGIC = b"[Paramco32]"
HEADER_BYTES = 16384
_UNCOMPRESSED = (b"[Parameter]", b"[Paramet32]")
_DAC_RANGE_V = 20.0  # ±10 V
_ANGSTROM = 1e-10
_CHANNEL_BITS = ("Z", "Current")  # bit 0, bit 1 of Channelselectval; then ADC channels
_FILENAME_DATE = re.compile(r"A(\d{6}\.\d{6})")


def parse_header(text: str) -> dict[str, str]:
    """``{"Num.X": "256", "GainZ": "3", ...}``: each key once, by its short name."""
    header: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        key = name.split(" / ")[0].strip()
        if sep and key and key.isprintable() and key.isascii():
            header.setdefault(key, value.strip())
    return header


def _number(path: Path, header: dict[str, str], key: str) -> float:
    try:
        return float(header[key].split()[0])
    except KeyError:
        raise ScanFormatError(path, f"header has no {key}") from None
    except (ValueError, IndexError):
        raise ScanFormatError(path, f"{key} is not numeric: {header[key]!r}") from None


def _channel_names(header: dict[str, str], n_images: int) -> list[tuple[str, str]]:
    """``(channel, direction)`` per stored image, from ``Channelselectval`` and ``Channels``."""
    try:
        mask = int(header["Channelselectval"])
    except (KeyError, ValueError):
        mask = (1 << n_images) - 1
    names = [
        _CHANNEL_BITS[bit] if bit < len(_CHANNEL_BITS) else f"ADC{bit - 1}"
        for bit in range(mask.bit_length())
        if mask >> bit & 1
    ]
    if n_images == 2 * len(names):
        return [(n, "forward") for n in names] + [(n, "backward") for n in names]
    if n_images == len(names):
        return [(n, "forward") for n in names]
    return [(f"channel{i}", "forward") for i in range(n_images)]


def _date(path: Path) -> datetime | None:
    match = _FILENAME_DATE.search(path.name)
    if match is None:
        return None
    try:
        return datetime.strptime(match.group(1), "%y%m%d.%H%M%S")
    except ValueError:
        return None


def read_createc(path: str | Path) -> ScanFile:
    """Read a Createc ``.dat`` image: Z in metres, the other channels in raw counts."""
    path = Path(path)
    raw = path.read_bytes()
    if raw.startswith(_UNCOMPRESSED):
        raise ScanFormatError(path, "uncompressed Createc .dat (before STMAFM 4) is not supported")
    if not raw.startswith(MAGIC):
        raise ScanFormatError(path, "not a Createc .dat file (no [Paramco32] at the start)")
    if len(raw) < HEADER_BYTES or raw[HEADER_BYTES - 4 : HEADER_BYTES] != b"DATA":
        raise ScanFormatError(
            path, f"truncated: the {HEADER_BYTES}-byte header does not end in DATA"
        )
    header = parse_header(raw[: HEADER_BYTES - 4].decode("latin-1"))
    try:
        values = np.frombuffer(zlib.decompress(raw[HEADER_BYTES:]), dtype="<f4")
    except zlib.error as exc:
        raise ScanFormatError(path, f"broken zlib stream in the data ({exc})") from None
    nx, ny = int(_number(path, header, "Num.X")), int(_number(path, header, "Num.Y"))
    n_images = int(_number(path, header, "Channels"))
    needed = 1 + n_images * nx * ny
    if values.size < needed:
        raise ScanFormatError(
            path,
            f"wrong byte count: {values.size} float32 after decompression, "
            f"{n_images} images of {nx}x{ny} need {needed}",
        )
    bits = int(re.sub(r"\D", "", header.get("DAC-Type", "20bit")) or 20)
    volts_per_count = _DAC_RANGE_V / 2**bits
    z_per_count = (
        volts_per_count
        * _number(path, header, "ZPiezoconst")
        * _number(path, header, "GainZ")
        * _ANGSTROM
    )
    stack = values[1:needed].reshape(n_images, ny, nx)[:, ::-1]
    images = tuple(
        ScanImage(
            channel,
            direction,  # type: ignore[arg-type]
            "m" if channel == "Z" else "counts",
            stack[i] * np.float32(z_per_count) if channel == "Z" else stack[i],
        )
        for i, (channel, direction) in enumerate(_channel_names(header, n_images))
    )
    x_per_count = volts_per_count * _ANGSTROM * _number(path, header, "GainX")
    centre = (
        float(header.get("Scanrotoffx", 0)) * x_per_count * _number(path, header, "Xpiezoconst"),
        float(header.get("Scanrotoffy", 0)) * x_per_count * _number(path, header, "YPiezoconst"),
    )
    bias_mv = header.get("Biasvolt[mV]") or header.get("BiasVoltage")
    setpoint = header.get("Current[A]")
    return ScanFile(
        images=images,
        size_m=(
            _number(path, header, "Length x[A]") * _ANGSTROM,
            _number(path, header, "Length y[A]") * _ANGSTROM,
        ),
        centre_m=centre,
        angle_deg=float(header.get("Rotation", 0.0)),
        bias_v=float(bias_mv) / 1000 if bias_mv else None,
        setpoint=float(setpoint) if setpoint else None,
        setpoint_unit="A",
        date=_date(path),
        instrument="Createc STMAFM",
        format=FORMAT,
        header=header,
        source=str(path),
        sha256=file_sha256(path),
    )
