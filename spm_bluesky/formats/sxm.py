"""Nanonis ``.sxm`` images: read and write (software generations 4 and 5).

The layout, as Nanonis writes it: an ASCII header of ``:KEY:`` lines, each followed by its
value lines, ending in ``:SCANIT_END:``, three newlines and the two bytes ``\\x1a\\x04``;
then, per channel of ``:DATA_INFO:`` and per direction (forward, then backward when the
channel's direction is ``both``), ``ny * nx`` float32 values in the byte order that
``:SCANIT_TYPE:`` names (``MSBFIRST``, big-endian, in every file seen). Lines are stored in
acquisition order (an ``up`` scan starts at the bottom, a ``down`` scan at the top) and a
backward line runs right to left; :func:`read_sxm` turns both into the package convention
(see :mod:`spm_bluesky.formats._model`), and :func:`write_sxm` turns them back.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from ._model import ScanFile, ScanFormatError, ScanImage, file_sha256

FORMAT = "nanonis-sxm"
END_TAG = b":SCANIT_END:"
DATA_MARKER = b"\x1a\x04"
_END_BLOCK = END_TAG + b"\n\n\n" + DATA_MARKER
_BYTE_ORDERS = {"MSBFIRST": ">", "LSBFIRST": "<"}
#: Header keys that :func:`write_sxm` writes from the scan's fields, in this order.
_SCAN_KEYS = (
    "NANONIS_VERSION", "SCANIT_TYPE", "REC_DATE", "REC_TIME", "SCAN_PIXELS", "SCAN_TIME",
    "SCAN_RANGE", "SCAN_OFFSET", "SCAN_ANGLE", "SCAN_DIR", "BIAS", "Z-CONTROLLER",
)
_DATA_INFO_TITLE = "\tChannel\tName\tUnit\tDirection\tCalibration\tOffset"


def parse_header(text: str) -> dict[str, str]:
    """``{"SCAN_PIXELS": "       256       256", ...}``: every ``:KEY:`` and its value lines."""
    header: dict[str, str] = {}
    key: str | None = None
    lines: list[str] = []
    for line in text.split("\n"):
        if len(line) > 1 and line.startswith(":") and line.endswith(":"):
            if key is not None:
                header[key] = "\n".join(lines)
            key, lines = line[1:-1], []
        elif key is not None:
            lines.append(line)
    if key is not None:
        header[key] = "\n".join(lines)
    return header


def _table(value: str) -> list[dict[str, str]]:
    """A tab-separated header table (``DATA_INFO``, ``Z-CONTROLLER``) as one dict per row."""
    rows = [
        [cell.strip() for cell in line.strip("\t").split("\t")]
        for line in value.split("\n")
        if line.strip()
    ]
    if not rows:
        return []
    title, *body = rows
    return [dict(zip(title, row, strict=False)) for row in body]


def _floats(path: Path, header: dict[str, str], key: str, n: int) -> list[float]:
    try:
        values = [float(v) for v in header[key].split()]
    except KeyError:
        raise ScanFormatError(path, f"header has no :{key}:") from None
    except ValueError:
        raise ScanFormatError(path, f":{key}: is not numeric: {header[key].strip()!r}") from None
    if len(values) != n:
        raise ScanFormatError(path, f":{key}: needs {n} numbers, has {header[key].strip()!r}")
    return values


def _date(header: dict[str, str]) -> datetime | None:
    try:
        return datetime.strptime(
            f"{header['REC_DATE'].strip()} {header['REC_TIME'].strip()}", "%d.%m.%Y %H:%M:%S"
        )
    except (KeyError, ValueError):
        return None


def _setpoint(header: dict[str, str]) -> tuple[float | None, str]:
    rows = _table(header.get("Z-CONTROLLER", ""))
    if rows and "Setpoint" in rows[0]:
        value, _, unit = rows[0]["Setpoint"].partition(" ")
        try:
            return float(value), unit.strip() or "A"
        except ValueError:
            pass
    try:
        return float(header["Z-Controller>Setpoint"]), header.get(
            "Z-Controller>Setpoint unit", "A"
        ).strip()
    except (KeyError, ValueError):
        return None, "A"


def split_header(path: str | Path, raw: bytes) -> tuple[dict[str, str], bytes]:
    """The parsed header and the data bytes after ``\\x1a\\x04``; one-line errors otherwise."""
    path = Path(path)
    if not raw.startswith(b":NANONIS_VERSION:"):
        raise ScanFormatError(path, "not a Nanonis .sxm file (no :NANONIS_VERSION: at the start)")
    end = raw.find(END_TAG)
    if end < 0:
        raise ScanFormatError(
            path, "header has no :SCANIT_END: (not an .sxm image, or cut inside the header)"
        )
    marker = raw.find(DATA_MARKER, end)
    if marker < 0 or raw[end + len(END_TAG) : marker].strip(b"\r\n"):
        raise ScanFormatError(path, "truncated: no \\x1a\\x04 data marker after :SCANIT_END:")
    return parse_header(raw[:end].decode("latin-1")), raw[marker + len(DATA_MARKER) :]


def read_sxm(path: str | Path) -> ScanFile:
    """Read a Nanonis ``.sxm`` image with all its channels, both directions, and its header."""
    path = Path(path)
    raw = path.read_bytes()
    header, payload = split_header(path, raw)
    kind = header.get("SCANIT_TYPE", "").split()
    if len(kind) != 2 or kind[0] != "FLOAT" or kind[1] not in _BYTE_ORDERS:
        raise ScanFormatError(path, f"unsupported :SCANIT_TYPE: {' '.join(kind)!r}")
    nx, ny = (int(v) for v in _floats(path, header, "SCAN_PIXELS", 2))
    channels = _table(header.get("DATA_INFO", ""))
    if not channels:
        raise ScanFormatError(path, "header has no :DATA_INFO: channel table")
    directions: list[tuple[str, str, Literal["forward", "backward"]]] = []
    for row in channels:
        both = row.get("Direction", "both")
        for d in ("forward", "backward"):
            if both in ("both", d):
                directions.append((row["Name"], row.get("Unit", ""), d))
    expected = len(directions) * nx * ny * 4
    if len(payload) < expected:
        raise ScanFormatError(
            path,
            f"truncated: {len(payload)} bytes of data, the header announces {expected} "
            f"({len(directions)} images of {nx}x{ny} float32)",
        )
    if len(payload) != expected:
        raise ScanFormatError(
            path,
            f"wrong byte count: {len(payload)} bytes of data, the header announces {expected} "
            f"({len(directions)} images of {nx}x{ny} float32)",
        )
    stack = np.frombuffer(payload, dtype=_BYTE_ORDERS[kind[1]] + "f4").reshape(-1, ny, nx)
    scan_dir: Literal["up", "down"] = (
        "down" if header.get("SCAN_DIR", "").strip() == "down" else "up"
    )
    images = tuple(
        ScanImage(name, direction, unit, _to_convention(stack[i], direction, scan_dir))
        for i, (name, unit, direction) in enumerate(directions)
    )
    width, height = _floats(path, header, "SCAN_RANGE", 2)
    centre = _floats(path, header, "SCAN_OFFSET", 2)
    setpoint, setpoint_unit = _setpoint(header)
    bias: float | None
    try:
        bias = float(header.get("BIAS") or header["Bias>Bias (V)"])
    except (KeyError, ValueError):
        bias = None
    version = header.get("NanonisMain>SW Version", "").strip()
    return ScanFile(
        images=images,
        size_m=(width, height),
        centre_m=(centre[0], centre[1]),
        angle_deg=_floats(path, header, "SCAN_ANGLE", 1)[0] if "SCAN_ANGLE" in header else 0.0,
        bias_v=bias,
        setpoint=setpoint,
        setpoint_unit=setpoint_unit,
        date=_date(header),
        scan_direction=scan_dir,
        instrument=f"Nanonis {version}".strip(),
        format=FORMAT,
        header=header,
        source=str(path),
        sha256=file_sha256(path),
    )


def _to_convention(
    stored: npt.NDArray[np.float32], direction: str, scan_dir: str
) -> npt.NDArray[np.float32]:
    """Stored order -> lowest y first, left to right (its own inverse)."""
    image = stored[:, ::-1] if direction == "backward" else stored
    image = image[::-1] if scan_dir == "down" else image
    return np.ascontiguousarray(image, dtype=np.float32)


def _num(value: float) -> str:
    """Shortest text that reads back as the same float64 (Nanonis readers all use strtod)."""
    return repr(float(value))


def _z_controller(scan: ScanFile) -> str:
    """The feedback table: the source's own row with the setpoint replaced, or a minimal one
    (every title with a value: Gwyddion refuses a row shorter than its title)."""
    rows = _table(scan.header.get("Z-CONTROLLER", "")) if scan.format == FORMAT else []
    row = rows[0] if rows else {"Name": "log Current", "on": "1"}
    if scan.setpoint is None:
        row.pop("Setpoint", None)
    else:
        row["Setpoint"] = f"{_num(scan.setpoint)} {scan.setpoint_unit}"
    titles = [c for c in ("Name", "on", "Setpoint", "P-gain", "I-gain", "T-const") if row.get(c)]
    return "\t" + "\t".join(titles) + "\n\t" + "\t".join(row[c] for c in titles)


def _data_info(scan: ScanFile) -> tuple[str, list[npt.NDArray[np.float32]]]:
    known = {r.get("Name"): r for r in _table(scan.header.get("DATA_INFO", ""))}
    rows, stack = [], []
    for index, name in enumerate(scan.channels):
        present = [i for i in scan.images if i.channel == name]
        by_dir = {i.direction: i for i in present}
        order = [d for d in ("forward", "backward") if d in by_dir]
        which = "both" if len(order) == 2 else order[0]
        row = known.get(name, {}) if scan.format == FORMAT else {}
        cells = [
            row.get("Channel", str(index)),
            re.sub(r"\s+", "_", name),
            present[0].unit or " ",  # an empty cell would shift Gwyddion's columns
            which,
            row.get("Calibration", "1.000E+0"),
            row.get("Offset", "0.000E+0"),
        ]
        rows.append("\t" + "\t".join(cells))
        stack += [_to_convention(by_dir[d].data, d, scan.scan_direction) for d in order]
    return _DATA_INFO_TITLE + "\n" + "\n".join(rows) + "\n", stack


def _header_values(scan: ScanFile) -> dict[str, str]:
    nx, ny = scan.pixels
    date = scan.date
    kept = scan.header if scan.format == FORMAT else {}
    values = {
        "NANONIS_VERSION": "2",
        "SCANIT_TYPE": "              FLOAT            MSBFIRST",
        "REC_DATE": f" {date:%d.%m.%Y}" if date else "",
        "REC_TIME": f"{date:%H:%M:%S}" if date else "",
        "SCAN_PIXELS": f"{nx:>10d}{ny:>10d}",
        "SCAN_TIME": kept.get("SCAN_TIME", "             0.000E+0             0.000E+0"),
        "SCAN_RANGE": f"{_num(scan.size_m[0]):>22} {_num(scan.size_m[1]):>22}",
        "SCAN_OFFSET": f"{_num(scan.centre_m[0]):>22} {_num(scan.centre_m[1]):>22}",
        "SCAN_ANGLE": f"{_num(scan.angle_deg):>20}",
        "SCAN_DIR": scan.scan_direction,
        "BIAS": "" if scan.bias_v is None else f"{_num(scan.bias_v):>20}",
        "Z-CONTROLLER": _z_controller(scan),
    }
    if "ACQ_TIME" not in kept:
        values["ACQ_TIME"] = "         0.0"
    values.update((k, v) for k, v in kept.items() if k not in values and k != "DATA_INFO")
    return values


def write_sxm(path: str | Path, scan: ScanFile) -> Path:
    """Write ``scan`` as a Nanonis ``.sxm`` (big-endian float32) that Nanonis readers open.

    The scan fields (pixels, size, centre, angle, direction, bias, setpoint, date) are
    written from ``scan``; the rest of a header read from an ``.sxm`` is kept key by key.
    Channel names have their whitespace replaced by ``_``, as Nanonis spells them.
    """
    path = Path(path)
    info, stack = _data_info(scan)
    text = "".join(f":{k}:\n{v}\n" for k, v in _header_values(scan).items())
    text += f":DATA_INFO:\n{info}\n"
    payload = np.stack(stack).astype(">f4").tobytes()
    path.write_bytes(text.encode("latin-1", errors="replace") + _END_BLOCK + payload)
    return path
