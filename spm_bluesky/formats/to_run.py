"""STM image files as a Bluesky run, and a stored run's images as files again.

:func:`scan_documents` turns files of one :func:`layout` (event-model's ``compose_run``) into
one ``import_files`` run with one ``primary`` event per file, laid out as an acquired frame
(:mod:`spm_bluesky.schema`): the Z forward image as ``stm-scan-image`` (metres), the file's
other images as further fields (:func:`~spm_bluesky.schema.scan_channel`), the frame's
centre, size, pixels, angle, bias and setpoint, and its date as the instrument clock. The
start document lists, per event, the source path, its sha256, the scan's fields and the
file's whole header.

:func:`scan_from_import` and :func:`scan_from_frame` go the other way, from what a reader
of Tiled gives (start document, configuration, one event's data): an imported file comes
back as it was read (arrays bit for bit, the same scan fields and header); a frame the
microscope acquired becomes a one-image scan (Z forward, metres).

Pure: documents in, documents out; reading from and writing to Tiled is the caller's.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import numpy as np
from event_model import compose_run
from event_model.documents import Document

from spm_bluesky import schema

from ._model import ScanFile, ScanImage

#: The scan detector's name in descriptors (``object_keys``, ``configuration``).
SCAN_OBJECT = schema.data_key(schema.STM_DEVICE, "scan")
#: Scalar frame fields of an imported event: data key -> (unit, dtype).
_SCALARS = {
    schema.SCAN_CENTER_X: ("m", "number"),
    schema.SCAN_CENTER_Y: ("m", "number"),
    schema.SCAN_SIZE: ("m", "number"),
    schema.SCAN_SIZE_Y: ("m", "number"),
    schema.SCAN_PIXELS: ("", "integer"),
    schema.SCAN_LINES: ("", "integer"),
    schema.SCAN_ANGLE: ("deg", "number"),
    schema.SCAN_AREA_INDEX: ("", "integer"),
    schema.SCAN_FRAME_COUNTER: ("", "integer"),
    schema.SCAN_CLOCK: ("s", "number"),
}


def _epoch(date: datetime | None, default: float) -> float:
    """A file's date as seconds since the epoch (a date without a zone is read as UTC)."""
    if date is None:
        return default
    return (date if date.tzinfo else date.replace(tzinfo=UTC)).timestamp()


def _image_keys(scan: ScanFile) -> list[tuple[str, ScanImage]]:
    """(data key, image) in file order; Z forward (else the first image) is ``SCAN_IMAGE``."""
    try:
        main = scan.image("Z", "forward")
    except KeyError:
        main = scan.images[0]
    keys: list[tuple[str, ScanImage]] = []
    taken = {schema.SCAN_IMAGE}
    for image in scan.images:
        if image is main:
            keys.append((schema.SCAN_IMAGE, image))
            continue
        key, n = schema.scan_channel(image.channel, image.direction), 2
        while key in taken:  # two channel names that differ only in punctuation
            key, n = f"{schema.scan_channel(image.channel, image.direction)}{n}", n + 1
        taken.add(key)
        keys.append((key, image))
    return keys


def layout(scan: ScanFile) -> tuple[Any, ...]:
    """What files must share to be events of one run: the instrument, the image shape, and
    the data key and unit of every image."""
    return (scan.instrument, scan.format, scan.images[0].data.shape,
            tuple((key, image.unit) for key, image in _image_keys(scan)))


@dataclass(frozen=True)
class ImportedRun:
    """The documents of one import run, in order, and its uid."""

    uid: str
    documents: list[tuple[str, Document]]


def _file_metadata(scan: ScanFile) -> dict[str, Any]:
    md = scan.scan_metadata()
    md["channels"] = [
        {**channel, schema.CHANNEL_DATA_KEY: key}
        for channel, (key, _) in zip(
            cast(list[dict[str, Any]], md["channels"]), _image_keys(scan), strict=True)
    ]
    md.update(source=scan.source, sha256=scan.sha256)
    return md


def _event_data(scan: ScanFile, frame_counter: int, clock: float) -> dict[str, Any]:
    nx, ny = scan.pixels
    data: dict[str, Any] = {key: image.data for key, image in _image_keys(scan)}
    data.update({
        schema.SCAN_CENTER_X: float(scan.centre_m[0]),
        schema.SCAN_CENTER_Y: float(scan.centre_m[1]),
        schema.SCAN_SIZE: float(scan.size_m[0]),
        schema.SCAN_SIZE_Y: float(scan.size_m[1]),
        schema.SCAN_PIXELS: nx,
        schema.SCAN_LINES: ny,
        schema.SCAN_ANGLE: float(scan.angle_deg),
        schema.SCAN_BIAS: math.nan if scan.bias_v is None else float(scan.bias_v),
        schema.SCAN_SETPOINT: math.nan if scan.setpoint is None else float(scan.setpoint),
        schema.SCAN_AREA_INDEX: 0,
        schema.SCAN_FRAME_COUNTER: int(frame_counter),
        schema.SCAN_CLOCK: clock,
    })
    return data


def scan_documents(scans: Sequence[ScanFile], session_uid: str, first_counter: int = 1,
                   metadata: Mapping[str, Any] | None = None) -> ImportedRun:
    """The ``import_files`` run of ``scans`` (files read from disk, all of one :func:`layout`):
    one ``primary`` event each, in order.

    ``first_counter`` is the first file's frame counter (the files of one import are
    numbered on across runs); ``metadata`` is merged into the start document last.
    """
    if not scans:
        raise ValueError("an import run needs at least one file")
    if any(scan.source is None or scan.sha256 is None for scan in scans):
        raise ValueError("an imported scan needs its source path and sha256")
    if len({layout(scan) for scan in scans}) != 1:
        raise ValueError("the files of one import run must share their layout")
    now = time.time()
    first = scans[0]
    start_md: dict[str, Any] = {
        schema.PLAN_NAME: schema.IMPORT_FILES,
        schema.PLAN_ARGS: {"paths": [scan.source for scan in scans]},
        schema.SESSION_UID: session_uid,
        schema.INSTRUMENT: {"name": first.instrument or first.format, "simulated": False},
        "detectors": [SCAN_OBJECT],
        "num_points": len(scans),
        schema.SOURCE_PATH: [scan.source for scan in scans],
        schema.SOURCE_SHA256: [scan.sha256 for scan in scans],
        schema.SCAN_METADATA: [_file_metadata(scan) for scan in scans],
        # [key, value] pairs: header keys hold '.' and '/', which start documents refuse.
        schema.HEADER: [[[k, v] for k, v in scan.header.items()] for scan in scans],
        **(metadata or {}),
    }
    run = compose_run(metadata=start_md, time=now)
    nx, ny = first.pixels
    source = f"file:{first.format}"
    data_keys: dict[str, Any] = {
        key: {"source": source, "dtype": "array", "dtype_numpy": "<f4", "shape": [ny, nx],
              "units": image.unit}
        for key, image in _image_keys(first)
    }
    scalars = {**_SCALARS, schema.SCAN_BIAS: ("V", "number"),
               schema.SCAN_SETPOINT: (first.setpoint_unit, "number")}
    data_keys.update({key: {"source": source, "dtype": dtype, "shape": [], "units": unit}
                      for key, (unit, dtype) in scalars.items()})
    descriptor = run.compose_descriptor(
        name=schema.PRIMARY, data_keys=data_keys, time=now,
        object_keys={SCAN_OBJECT: list(data_keys)},
        hints={SCAN_OBJECT: {"fields": [schema.SCAN_CENTER_X, schema.SCAN_CENTER_Y]}})
    docs: list[tuple[str, Document]] = [
        ("start", run.start_doc), ("descriptor", descriptor.descriptor_doc)]
    for n, scan in enumerate(scans):
        clock = _epoch(scan.date, now)
        data = _event_data(scan, first_counter + n, clock)
        docs.append(("event", descriptor.compose_event(
            data=data, timestamps=dict.fromkeys(data, clock), seq_num=n + 1, time=clock)))
    docs.append(("stop", run.compose_stop(time=now)))
    return ImportedRun(run.start_doc["uid"], docs)


def _floats(value: Any) -> tuple[float, float]:
    first, second = value
    return float(first), float(second)


def scan_from_import(start: Mapping[str, Any], index: int,
                     arrays: Mapping[str, np.ndarray]) -> ScanFile:
    """File ``index`` of an ``import_files`` run (event ``seq_num`` ``index + 1``), from the
    run's start document and that event's arrays (data key -> 2-D array)."""
    md = start[schema.SCAN_METADATA][index]
    images = tuple(
        ScanImage(channel["channel"], channel["direction"], channel["unit"],
                  np.asarray(arrays[channel[schema.CHANNEL_DATA_KEY]], dtype=np.float32))
        for channel in md["channels"])
    return ScanFile(
        images=images,
        size_m=_floats(md["size_m"]),
        centre_m=_floats(md["centre_m"]),
        angle_deg=float(md["angle_deg"]),
        bias_v=None if md["bias_v"] is None else float(md["bias_v"]),
        setpoint=None if md["setpoint"] is None else float(md["setpoint"]),
        setpoint_unit=str(md["setpoint_unit"]),
        date=datetime.fromisoformat(md["date"]) if md["date"] else None,
        scan_direction=md["scan_direction"],
        instrument=str(md["instrument"]),
        format=str(md["format"]),
        header={str(k): str(v) for k, v in start[schema.HEADER][index]},
        source=md.get("source"),
        sha256=md.get("sha256"),
    )


def _number(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return None if math.isnan(number) else number


def scan_from_frame(start: Mapping[str, Any], configuration: Mapping[str, Any],
                    data: Mapping[str, Any], image: np.ndarray, seq_num: int,
                    event_time: float) -> ScanFile:
    """A frame the microscope acquired (one ``primary`` event of an image run) as a scan.

    ``configuration`` is the scan detector's configuration data (bias, setpoint), ``data``
    the event's scalars. The header records where the frame is stored (run, session, plan,
    ``seq_num``), so the file says where it came from.
    """
    size = float(data[schema.SCAN_SIZE])
    instrument = start.get(schema.INSTRUMENT) or {}
    header = {
        "run_uid": str(start["uid"]),
        "seq_num": str(seq_num),
        schema.PLAN_NAME: str(start.get(schema.PLAN_NAME, "")),
        schema.SESSION_UID: str(start.get(schema.SESSION_UID, "")),
        "simulated": str(instrument.get("simulated", "")),
    }
    return ScanFile(
        images=(ScanImage("Z", "forward", "m", np.asarray(image, dtype=np.float32)),),
        size_m=(size, size),
        centre_m=(float(data[schema.SCAN_CENTER_X]), float(data[schema.SCAN_CENTER_Y])),
        bias_v=_number(configuration.get(schema.SCAN_BIAS)),
        setpoint=_number(configuration.get(schema.SCAN_SETPOINT)),
        date=datetime.fromtimestamp(event_time, UTC).replace(tzinfo=None, microsecond=0),
        instrument=str(instrument.get("name", "")),
        format="bluesky-run",
        header=header,
    )
