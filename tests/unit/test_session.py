"""Unit tests of the session helpers: where settings come from, the live image callback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from event_model import compose_run

from spm_bluesky.services.launch import ProcessRecord, ServiceError, ServiceState
from spm_bluesky.services.profile import LatestImage, ServiceMissing, SessionSettings, connect_tiled


def _state(data_dir: Path) -> ServiceState:
    record = ProcessRecord(pid=1, create_time=0.0, address="x", log="x.log")
    return ServiceState(
        data_dir=str(data_dir), prefix="TWIN:", seed=0, sim=True, ca_port=40000,
        epics_env={"EPICS_CA_SERVER_PORT": "40000", "EPICS_CA_ADDR_LIST": "127.0.0.1",
                   "EPICS_CAS_BEACON_ADDR_LIST": "127.0.0.1"},
        tiled_uri="http://127.0.0.1:40001", api_key="abc123", ioc=record, tiled=record,
        started=0.0)


def test_settings_come_from_the_state_file(tmp_path: Path) -> None:
    path = _state(tmp_path).write()
    assert path.stat().st_mode & 0o777 == 0o600
    settings = SessionSettings.resolve({"SPM_BLUESKY_HOME": str(tmp_path)})
    assert settings.prefix == "TWIN:" and settings.sim
    assert settings.tiled_uri == "http://127.0.0.1:40001" and settings.tiled_api_key == "abc123"
    assert settings.epics_env == {"EPICS_CA_SERVER_PORT": "40000",  # the client side only
                                  "EPICS_CA_ADDR_LIST": "127.0.0.1"}
    assert settings.metadata_dir == tmp_path / "re_md"
    assert settings.source == str(path)


def test_environment_overrides_the_state_file(tmp_path: Path) -> None:
    _state(tmp_path).write()
    settings = SessionSettings.resolve({
        "SPM_BLUESKY_HOME": str(tmp_path), "SPM_STM_PREFIX": "REAL:", "SPM_STM_SIM": "0",
        "SPM_TILED_URI": "http://tiled.example:8000", "TILED_API_KEY": "k",
        "SPM_METADATA_DIR": str(tmp_path / "md")})
    assert (settings.prefix, settings.sim) == ("REAL:", False)
    assert (settings.tiled_uri, settings.tiled_api_key) == ("http://tiled.example:8000", "k")
    assert settings.metadata_dir == tmp_path / "md"


def test_without_state_file_or_variables_tiled_is_reported_missing(tmp_path: Path) -> None:
    settings = SessionSettings.resolve({"SPM_BLUESKY_HOME": str(tmp_path)})
    assert settings.source == "environment" and settings.epics_env == {}
    with pytest.raises(ServiceMissing, match=r"no Tiled server is configured.*spm-bluesky up"):
        connect_tiled(settings)


def test_a_state_file_of_another_version_is_refused(tmp_path: Path) -> None:
    (tmp_path / "services.json").write_text('{"version": 99}')
    with pytest.raises(ServiceError, match="state version 99"):
        SessionSettings.resolve({"SPM_BLUESKY_HOME": str(tmp_path)})


def test_latest_image_shows_each_2d_image_headless() -> None:
    shown = LatestImage()
    run = compose_run(metadata={"plan_name": "survey", "scan_id": 7})
    shown("start", run.start_doc)
    keys = {"img": {"source": "sim", "dtype": "array", "shape": [8, 8], "units": "m"},
            "x": {"source": "sim", "dtype": "number", "shape": []}}
    stream = run.compose_descriptor(name="primary", data_keys=keys)
    shown("descriptor", stream.descriptor_doc)
    images = [np.full((8, 8), i * 1e-9, dtype=np.float32) for i in range(3)]
    for i, image in enumerate(images):
        shown("event", stream.compose_event(data={"img": image, "x": float(i)},
                                            timestamps={"img": 0.0, "x": 0.0}))
    assert shown.shown == 3
    np.testing.assert_allclose(shown.last, images[-1])
    assert shown._artist.axes.get_title() == "scan 7 survey: image 3"
    np.testing.assert_allclose(shown._artist.get_array(), images[-1] * 1e9)  # shown in nm
