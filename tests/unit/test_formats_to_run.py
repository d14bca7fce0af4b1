"""An STM file as a Bluesky run: the documents, laid out as an acquired frame, and back."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from event_model import DocumentNames, schema_validators

from spm_bluesky import schema
from spm_bluesky.formats import ScanFile, ScanImage, read_scan
from spm_bluesky.formats.tiled_adapter import ADAPTERS_BY_MIMETYPE
from spm_bluesky.formats.to_run import (
    scan_documents,
    scan_from_frame,
    scan_from_import,
)
from spm_bluesky.storage.server import FILE_ADAPTERS, TiledConfig, tiled_service_config
from tests.unit._formats_data import SXM_GENERIC5, real_file_params, synthetic_createc
from tests.unit.test_formats_roundtrip import acquired_like


def _docs(scan: ScanFile, session: str = "s") -> dict[str, Any]:
    run = scan_documents([scan], session)
    named = {name: doc for name, doc in run.documents}
    assert [name for name, _ in run.documents] == ["start", "descriptor", "event", "stop"]
    assert named["start"]["uid"] == run.uid
    return named


@pytest.mark.parametrize("path", [*real_file_params(), "synthetic createc"])
def test_every_real_file_makes_valid_documents_and_comes_back_whole(
        path: Path | str, tmp_path: Path) -> None:
    if path == "synthetic createc":
        path = synthetic_createc(tmp_path / "A230102.030405.dat")
    scan = read_scan(path)
    docs = _docs(scan, "session-1")
    for name, doc in docs.items():
        schema_validators[DocumentNames(name)].validate(doc)
    start, descriptor, event = docs["start"], docs["descriptor"], docs["event"]
    assert start[schema.PLAN_NAME] == schema.IMPORT_FILES
    assert start[schema.SESSION_UID] == "session-1"
    assert start[schema.SOURCE_PATH] == [str(path)]
    assert start[schema.SOURCE_SHA256] == [scan.sha256]
    assert dict(start[schema.HEADER][0]) == scan.header
    keys = [c[schema.CHANNEL_DATA_KEY] for c in start[schema.SCAN_METADATA][0]["channels"]]
    assert len(set(keys)) == len(scan.images) and schema.SCAN_IMAGE in keys
    arrays = {key: event["data"][key] for key in keys}
    back = scan_from_import(start, 0, arrays)
    assert back.scan_metadata() == scan.scan_metadata()
    assert back.header == scan.header and back.sha256 == scan.sha256
    for ours, theirs in zip(scan.images, back.images, strict=True):
        assert theirs.data.dtype == np.float32
        np.testing.assert_array_equal(theirs.data, ours.data)
    nx, ny = scan.pixels
    assert descriptor["data_keys"][schema.SCAN_IMAGE]["shape"] == [ny, nx]
    assert event["data"][schema.SCAN_PIXELS] == nx and event["data"][schema.SCAN_LINES] == ny


def test_the_event_is_laid_out_as_an_acquired_frame() -> None:
    scan = read_scan(SXM_GENERIC5)
    docs = _docs(scan)
    data_keys = docs["descriptor"]["data_keys"]
    image = data_keys[schema.SCAN_IMAGE]
    assert (image["dtype_numpy"], image["units"]) == ("<f4", "m")  # what the device records
    np.testing.assert_array_equal(docs["event"]["data"][schema.SCAN_IMAGE],
                                  scan.image("Z", "forward").data)
    current = schema.scan_channel("Current", "backward")
    assert data_keys[current]["units"] == "A"
    event = docs["event"]["data"]
    assert event[schema.SCAN_SIZE] == scan.size_m[0] and event[schema.SCAN_ANGLE] == scan.angle_deg
    assert (event[schema.SCAN_CENTER_X], event[schema.SCAN_CENTER_Y]) == scan.centre_m
    assert scan.date is not None
    assert event[schema.SCAN_CLOCK] == pytest.approx(
        (scan.date - datetime(1970, 1, 1)).total_seconds())
    assert (event[schema.SCAN_BIAS], event[schema.SCAN_SETPOINT]) == (scan.bias_v, scan.setpoint)
    assert data_keys[schema.SCAN_BIAS]["units"] == "V"
    assert data_keys[schema.SCAN_SETPOINT]["units"] == scan.setpoint_unit


def test_files_of_one_layout_are_events_of_one_run() -> None:
    scans = [acquired_like(16, seed=s).replace(source=f"f{s}.sxm", sha256=f"{s:064d}")
             for s in range(3)]
    run = scan_documents(scans, "s", first_counter=5)
    events = [doc for name, doc in run.documents if name == "event"]
    assert [e["seq_num"] for e in events] == [1, 2, 3]
    assert [e["data"][schema.SCAN_FRAME_COUNTER] for e in events] == [5, 6, 7]
    start = run.documents[0][1]
    assert start[schema.SOURCE_PATH] == ["f0.sxm", "f1.sxm", "f2.sxm"]
    for i, (scan, event) in enumerate(zip(scans, events, strict=True)):
        keys = [c[schema.CHANNEL_DATA_KEY] for c in start[schema.SCAN_METADATA][i]["channels"]]
        back = scan_from_import(start, i, {k: event["data"][k] for k in keys})
        np.testing.assert_array_equal(back.images[1].data, scan.images[1].data)
        assert back.source == scan.source
    other = scans[0].replace(images=scans[0].images[:1])
    with pytest.raises(ValueError, match="share their layout"):
        scan_documents([scans[0], other], "s")
    with pytest.raises(ValueError, match="at least one file"):
        scan_documents([], "s")


def test_channel_keys_are_distinct_even_when_names_differ_only_in_punctuation() -> None:
    data = np.zeros((4, 4), np.float32)
    scan = ScanFile(images=(ScanImage("LI X", "forward", "A", data),
                            ScanImage("LI-X", "forward", "A", data + 1)),
                    size_m=(1e-9, 1e-9), source="x.sxm", sha256="0" * 64)
    docs = _docs(scan)
    keys = [c[schema.CHANNEL_DATA_KEY]
            for c in docs["start"][schema.SCAN_METADATA][0]["channels"]]
    assert keys[0] == schema.SCAN_IMAGE  # no Z: the first image is the frame's image
    assert keys[1] == schema.scan_channel("LI-X", "forward")
    assert schema.scan_channel("LI X", "forward") == schema.scan_channel("LI-X", "forward")
    back = scan_from_import(docs["start"], 0, {k: docs["event"]["data"][k] for k in keys})
    np.testing.assert_array_equal(back.images[1].data, data + 1)


def test_a_scan_without_its_source_is_refused() -> None:
    scan = read_scan(SXM_GENERIC5).replace(source=None)
    with pytest.raises(ValueError, match="source path and sha256"):
        scan_documents([scan], "s")


def test_an_acquired_frame_becomes_a_z_image_in_metres() -> None:
    image = np.arange(16, dtype=np.float32).reshape(4, 4) * 1e-11
    data = {schema.SCAN_SIZE: 10e-9, schema.SCAN_CENTER_X: 1e-7, schema.SCAN_CENTER_Y: -2e-7}
    start = {"uid": "run-1", schema.PLAN_NAME: schema.SURVEY, schema.SESSION_UID: "s",
             schema.INSTRUMENT: {"name": "stm", "simulated": True}}
    scan = scan_from_frame(start, {schema.SCAN_BIAS: 0.5, schema.SCAN_SETPOINT: float("nan")},
                           data, image, 3, 1.7e9)
    assert [(i.channel, i.direction, i.unit) for i in scan.images] == [("Z", "forward", "m")]
    np.testing.assert_array_equal(scan.images[0].data, image)
    assert scan.size_m == (10e-9, 10e-9) and scan.centre_m == (1e-7, -2e-7)
    assert scan.bias_v == 0.5 and scan.setpoint is None
    assert scan.header["run_uid"] == "run-1" and scan.header["seq_num"] == "3"
    assert scan.date == datetime(2023, 11, 14, 22, 13, 20)


def test_the_server_config_serves_a_files_folder_with_the_adapters(tmp_path: Path) -> None:
    plain = tiled_service_config(TiledConfig(tmp_path / "a"), "k")
    assert "readable_storage" not in plain["catalog"]
    config = tiled_service_config(TiledConfig(tmp_path / "a", files_dir=tmp_path), "k")
    assert config["catalog"]["readable_storage"] == [str(tmp_path.resolve())]
    assert config["catalog"]["adapters_by_mimetype"] == FILE_ADAPTERS == ADAPTERS_BY_MIMETYPE
    with pytest.raises(ValueError, match="not a folder"):
        TiledConfig(tmp_path / "a", files_dir=tmp_path / "missing")
