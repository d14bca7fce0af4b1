"""A new data directory gets a copy of an empty catalog made once per Tiled version by
Tiled's own ``tiled catalog init``, and a server on that copy stores and serves runs."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
from event_model import compose_run

from spm_bluesky.storage import TiledConfig, connect, make_writer, start_server
from spm_bluesky.storage.catalog_template import place_empty_catalog, template_path
from spm_bluesky.storage.server import CATALOG_FILE, tiled_service_config

pytestmark = pytest.mark.integration


def _tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        return {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE "
                                             "type = 'table'")}


def test_the_template_is_made_once_and_copied(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    started = time.perf_counter()
    assert place_empty_catalog(tmp_path / "one.db")
    made = time.perf_counter() - started
    template = template_path()
    assert template.parent == tmp_path / "cache" / "spm-bluesky" and template.is_file()
    started = time.perf_counter()
    assert place_empty_catalog(tmp_path / "two.db")
    copied = time.perf_counter() - started
    print(f"first catalog (tiled catalog init) {made:.2f} s, a copy {copied:.3f} s")
    assert copied < made / 10
    one, two = (tmp_path / "one.db").read_bytes(), (tmp_path / "two.db").read_bytes()
    assert one == two == template.read_bytes()
    assert {"nodes", "alembic_version"} <= _tables(tmp_path / "one.db")
    with pytest.raises(FileExistsError):
        place_empty_catalog(tmp_path / "one.db")


def test_without_a_usable_cache_tiled_initialises_the_catalog(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    assert not place_empty_catalog(tmp_path / "catalog.db")
    assert not (tmp_path / "catalog.db").exists()
    config = TiledConfig(tmp_path / "data")
    assert tiled_service_config(config, "k")["catalog"]["init_if_not_exists"]
    with start_server(config) as server:  # Tiled's own initialisation, as before
        client = connect(server.uri, server.api_key)
        assert list(client) == []


def test_a_server_on_a_copied_catalog_stores_and_serves_a_run(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    config = TiledConfig(tmp_path / "data")
    with start_server(config) as server:
        assert (config.data_dir / CATALOG_FILE).read_bytes()[:16] == b"SQLite format 3\x00"
        assert template_path().is_file()
        client = connect(server.uri, server.api_key)
        writer = make_writer(client)
        run = compose_run(metadata={"plan_name": "copied"})
        writer("start", run.start_doc)
        bundle = run.compose_descriptor(name="primary", data_keys={
            "image": {"source": "t", "dtype": "array", "shape": [8, 8],
                      "dtype_numpy": "<f4"}})
        writer("descriptor", bundle.descriptor_doc)
        image = np.arange(64, dtype=np.float32).reshape(8, 8)
        writer("event", bundle.compose_event(data={"image": image},
                                             timestamps={"image": 0.0}, seq_num=1))
        writer("stop", run.compose_stop())
        stored = connect(server.uri, server.api_key)[run.start_doc["uid"]]
        np.testing.assert_array_equal(stored["primary"]["image"].read()[0], image)
