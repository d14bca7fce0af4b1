"""Gwyddion ``.gwy`` files, read and written through the ``gwyfile`` library.

One data field per image, titled ``"<channel> (<direction>)"``, with the physical size in
metres and the z unit; each field's ``/N/meta`` container (what Gwyddion's metadata browser
shows) holds the scan fields under ``scan.*`` keys and the source file's header, key by key.
Gwyddion puts the top line first, so rows are flipped on the way in and out.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Any

import gwyfile
import numpy as np
from gwyfile.objects import GwyContainer, GwyDataField, GwySIUnit

from ._model import ScanFile, ScanFormatError, ScanImage, file_sha256

FORMAT = "gwyddion-gwy"
MAGIC = b"GWYP"
_TITLE = re.compile(r"^(?P<channel>.*) \((?P<direction>forward|backward)\)$")
_FIELD = re.compile(r"^/(\d+)/data$")
_PREFIX = "scan."


def _meta(scan: ScanFile) -> GwyContainer:
    fields: dict[str, Any] = {
        "size_m": scan.size_m,
        "centre_m": scan.centre_m,
        "angle_deg": scan.angle_deg,
        "bias_v": scan.bias_v,
        "setpoint": scan.setpoint,
        "setpoint_unit": scan.setpoint_unit,
        "date": scan.date.isoformat() if scan.date else None,
        "scan_direction": scan.scan_direction,
        "instrument": scan.instrument,
        "format": scan.format,
        "source": scan.source,
        "sha256": scan.sha256,
    }
    meta = {
        _PREFIX + key: " ".join(repr(float(v)) for v in value)
        if isinstance(value, tuple)
        else repr(float(value))
        if isinstance(value, float)
        else str(value)
        for key, value in fields.items()
        if value is not None
    }
    meta.update((k, v) for k, v in scan.header.items() if not k.startswith(_PREFIX))
    return GwyContainer(meta, typecodes=dict.fromkeys(meta, "s"))


def write_gwy(path: str | Path, scan: ScanFile) -> Path:
    """Write every image of ``scan`` as a data field of one ``.gwy`` file."""
    path = Path(path)
    width, height = scan.size_m
    container = GwyContainer()
    for n, image in enumerate(scan.images):
        container[f"/{n}/data"] = GwyDataField(
            np.ascontiguousarray(image.data[::-1], dtype=np.float64),
            xreal=float(width),
            yreal=float(height),
            xoff=float(scan.centre_m[0] - width / 2),
            yoff=float(scan.centre_m[1] - height / 2),
            si_unit_xy=GwySIUnit(unitstr="m"),
            si_unit_z=GwySIUnit(unitstr=image.unit),
        )
        container[f"/{n}/data/title"] = f"{image.channel} ({image.direction})"
        container.typecodes[f"/{n}/data/title"] = "s"
        container[f"/{n}/meta"] = _meta(scan)
    container.tofile(str(path))
    return path


def _load(path: Path) -> GwyContainer:
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == b"GWYO":
        raise ScanFormatError(path, "Gwyddion 1.x .gwy (GWYO) is not supported; resave it in 2.x")
    if magic != MAGIC:
        raise ScanFormatError(path, "not a Gwyddion .gwy file (no GWYP magic at the start)")
    try:
        obj = gwyfile.load(str(path))
    except Exception as exc:  # gwyfile raises bare asserts and struct errors
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ScanFormatError(path, f"corrupt .gwy ({reason})") from None
    if not isinstance(obj, GwyContainer):
        raise ScanFormatError(path, f"a .gwy holding a {type(obj).__name__}, not a container")
    return obj


def _scan_fields(meta: dict[str, str]) -> dict[str, Any]:
    def floats(key: str) -> tuple[float, ...] | None:
        text = meta.get(_PREFIX + key)
        return tuple(float(v) for v in text.split()) if text else None

    fields: dict[str, Any] = {}
    for key in ("angle_deg", "bias_v", "setpoint"):
        value = floats(key)
        if value:
            fields[key] = value[0]
    for key in ("size_m", "centre_m"):
        value = floats(key)
        if value:
            fields[key] = value
    for key in ("setpoint_unit", "scan_direction", "instrument"):
        if _PREFIX + key in meta:
            fields[key] = meta[_PREFIX + key]
    if _PREFIX + "date" in meta:
        fields["date"] = datetime.fromisoformat(meta[_PREFIX + "date"])
    return fields


def read_gwy(path: str | Path) -> ScanFile:
    """Read every data field of a ``.gwy`` file; the scan fields come from our own meta keys
    where present (files this module wrote), otherwise from the first field's geometry."""
    path = Path(path)
    obj = _load(path)
    numbered = sorted(
        (int(m.group(1)), value)
        for key, value in obj.items()
        if (m := _FIELD.match(key)) and isinstance(value, GwyDataField)
    )
    if not numbered:
        raise ScanFormatError(path, "a .gwy without any image data field")
    images = []
    for n, field in numbered:
        title = str(obj.get(f"/{n}/data/title", f"channel{n}"))
        match = _TITLE.match(title)
        channel, direction = (match["channel"], match["direction"]) if match else (title, "forward")
        unit = field.si_unit_z.unitstr if field.get("si_unit_z") is not None else ""
        data = np.ascontiguousarray(field.data[::-1], dtype=np.float32)
        images.append(ScanImage(channel, direction, unit, data))  # type: ignore[arg-type]
    first_n, first = numbered[0]
    raw_meta = obj.get(f"/{first_n}/meta")
    meta = {str(k): str(v) for k, v in raw_meta.items()} if raw_meta is not None else {}
    xreal, yreal = float(first["xreal"]), float(first["yreal"])
    geometry: dict[str, Any] = {
        "size_m": (xreal, yreal),
        "centre_m": (
            float(first.get("xoff", 0.0)) + xreal / 2,
            float(first.get("yoff", 0.0)) + yreal / 2,
        ),
    }
    geometry.update(_scan_fields(meta))
    return ScanFile(
        images=tuple(images),
        format=FORMAT,
        header={k: v for k, v in meta.items() if not k.startswith(_PREFIX)},
        source=str(path),
        sha256=file_sha256(path),
        **geometry,
    )

