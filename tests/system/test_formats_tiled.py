"""`tiled serve directory` with our adapters serves a folder of real STM files to a client.

The folder holds the committed real ``.sxm`` files and a Createc ``.dat`` made by the test
(the real Createc file, not in the repository, is added when the shared data folder has it).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from tiled.client import from_uri
from tiled.client.register import strip_suffixes

from spm_bluesky.formats import read_scan
from tests.unit._formats_data import ALL_FILES, SXM_FILES, synthetic_createc

pytestmark = [pytest.mark.integration, pytest.mark.slow]
TILED = Path(sys.executable).with_name("tiled")
MODULE = "spm_bluesky.formats.tiled_adapter"
CREATEC_MADE = "A230102.030405.dat"


def _key(path: Path) -> str:
    """The node name Tiled gives a file: its name up to the first dot."""
    return str(strip_suffixes(path.name))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[object, Path, Path]]:
    """A real ``tiled serve directory`` over a folder of real files: a client, the log, the
    folder."""
    folder = tmp_path_factory.mktemp("stm-files")
    files = [p for p in ALL_FILES if p.suffix in {".sxm", ".dat"}]
    for path in files:
        shutil.copy(path, folder / path.name)
    files.append(synthetic_createc(folder / CREATEC_MADE, nx=64, ny=48, seed=3))
    (folder / "notes.txt").write_text("not an image\n")
    (folder / "broken.sxm").write_bytes(SXM_FILES[0].read_bytes()[:-1000])
    key, port = secrets.token_hex(16), _free_port()
    log = tmp_path_factory.mktemp("log") / "tiled.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                str(TILED), "serve", "directory", str(folder),
                "--host", "127.0.0.1", "--port", str(port),
                "--mimetype-hook", f"{MODULE}:detect_mimetype",
                "--adapter", f"application/x-nanonis-sxm={MODULE}:SXMAdapter",
                "--adapter", f"application/x-createc-dat={MODULE}:CreatecAdapter",
            ],
            env={**os.environ, "TILED_SINGLE_USER_API_KEY": key},  # never on the command line
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        client = None
        deadline = time.monotonic() + 120
        expected = {_key(p) for p in files}
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            try:
                client = from_uri(f"http://127.0.0.1:{port}", api_key=key)
                if expected <= set(client):
                    break
            except Exception:  # not listening yet, or still registering
                pass
            time.sleep(0.5)
        else:
            pytest.fail(f"the folder was not served within 120 s:\n{log.read_text()}")
        assert key not in log.read_text()
        yield client, log, folder
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("path", SXM_FILES, ids=lambda p: p.name)
def test_served_sxm_arrays_and_header(served: tuple[object, Path, Path], path: Path) -> None:
    client, _, _ = served
    node = client[_key(path)]  # type: ignore[index]
    ours = read_scan(path)
    array = node.read()
    assert array.dtype == np.float32
    assert array.shape == (len(ours.images), *ours.images[0].data.shape)
    for i, image in enumerate(ours.images):
        np.testing.assert_array_equal(array[i], image.data)
    meta = node.metadata
    assert meta["sha256"] == ours.sha256 and meta["format"] == "nanonis-sxm"
    assert dict(meta["header"]) == ours.header
    scan = meta["scan"]
    assert scan["size_m"] == list(ours.size_m) and scan["bias_v"] == ours.bias_v
    assert [c["channel"] for c in scan["channels"]] == [i.channel for i in ours.images]
    np.testing.assert_array_equal(node[0], ours.images[0].data)  # a slice, served by Tiled


def test_served_createc_and_no_unreadable_file(served: tuple[object, Path, Path]) -> None:
    client, log, folder = served
    for path in sorted(folder.glob("*.dat")):  # the one made here; the real one when shared
        node = client[_key(path)]  # type: ignore[index]
        ours = read_scan(path)
        array = node.read()
        assert array.dtype == np.float32 and array.shape == (4, *ours.image("Z").data.shape)
        for i, image in enumerate(ours.images):
            np.testing.assert_array_equal(array[i], image.data)
        assert node.metadata["format"] == "createc-dat"
        assert node.metadata["scan"]["size_m"] == list(ours.size_m)
    assert not {"notes", "broken"} & set(client)  # type: ignore[call-overload]
    assert "broken.sxm: truncated: " in log.read_text()  # skipped, saying why


def test_served_folder_needs_the_key(served: tuple[object, Path, Path]) -> None:
    client, _, _ = served
    uri = client.uri.split("/api/")[0]  # type: ignore[attr-defined]
    with pytest.raises(Exception, match=r"401|403|[Uu]nauthori[sz]ed|API key"):
        from_uri(uri, api_key="wrong-key")[_key(SXM_FILES[0])].read()
