"""``spm-bluesky import`` and ``export`` against a real Tiled server, on the real files.

The real files are the committed ones (and the real Createc file when the shared data folder
has it) plus a Createc ``.dat`` made by the test, so the Createc path always runs.

Files go in as runs of one session, come out as ``.sxm`` and ``.gwy`` with the identical
float32 arrays and scan fields, ``report`` and ``replay`` read the imported session, bad
files leave no run behind, and Gwyddion opens every export of a session the twin acquired.
The project's own server serves a folder of real ``.sxm`` files when its config names one.
"""

from __future__ import annotations

import re
import shutil
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tiled.queries import Eq

from spm_bluesky import schema
from spm_bluesky.commandline.main import main
from spm_bluesky.formats import ScanFile, read_scan, write_sxm
from spm_bluesky.storage import (
    TiledConfig,
    TiledServer,
    connect,
    read_array_stream,
    start_server,
)
from spm_bluesky.storage.importer import StoreFailed, store_run
from spm_bluesky.storage.server import connect_files
from tests.unit._formats_data import (
    ALL_FILES,
    GWY_GWYDDION,
    SXM_FILES,
    SXM_GENERIC5,
    synthetic_createc,
)
from tests.unit._gwyddion import MISSING
from tests.unit.test_formats_roundtrip import acquired_like

pytestmark = [pytest.mark.integration]


class Imported:
    """The files imported once into the session's Tiled server."""

    def __init__(self, session: str, where: list[str], files: list[Path],
                 runs: dict[Path, str]) -> None:
        self.session, self.where, self.files, self.runs = session, where, files, runs


def _where(server: Any, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setenv("SPM_TILED_API_KEY", server.api_key)  # never on the command line
    return ["--tiled-uri", server.uri]


def _count(server: Any) -> int:
    """Runs in the catalog, asked afresh (a client caches its length for a while)."""
    return len(connect(server.uri, server.api_key))


def _imported_runs(client: Any, session: str) -> dict[str, str]:
    """source path -> run uid of the session's imported runs."""
    found = client.search(Eq(schema.SESSION_UID_QUERY, session))
    return {path: uid for uid, run in found.items()
            for path in run.metadata["start"][schema.SOURCE_PATH]}


@pytest.fixture(autouse=True)
def _api_key(tiled_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The commands find the test server's key in the environment, as a user's shell has it."""
    _where(tiled_server, monkeypatch)


@pytest.fixture(scope="module")
def tiled_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TiledServer]:
    """This module's own Tiled server. An import is deduplicated over the whole server, and
    a pytest-xdist worker that steals more of this module's tests later builds the module's
    fixtures again: the second import must not meet the first one's runs."""
    server = start_server(TiledConfig(tmp_path_factory.mktemp("tiled-files")))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def imported(tiled_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Imported:
    """Every real test file and a Createc file made here, imported by the command in one
    session."""
    made = synthetic_createc(tmp_path_factory.mktemp("made") / "A230102.030405.dat",
                             nx=64, ny=64, seed=5)
    files = [*ALL_FILES, made]
    session = f"import-{uuid.uuid4().hex[:8]}"
    with pytest.MonkeyPatch.context() as monkeypatch:
        where = _where(tiled_server, monkeypatch)
        assert main(["import", *map(str, files), "--session", session, *where]) == 0
    runs = _imported_runs(connect(tiled_server.uri, tiled_server.api_key), session)
    return Imported(session, where, files, {Path(path): uid for path, uid in runs.items()})


def test_every_real_file_is_a_run_with_its_arrays_and_source(imported, tiled_client) -> None:
    assert set(imported.runs) == set(imported.files)
    for path, uid in imported.runs.items():
        ours = read_scan(path)
        run = tiled_client[uid]
        start = run.metadata["start"]
        assert start[schema.PLAN_NAME] == schema.IMPORT_FILES
        assert start[schema.SOURCE_SHA256] == [ours.sha256]  # four layouts: four runs
        assert dict(start[schema.HEADER][0]) == ours.header
        stored = read_array_stream(run, schema.SCAN_IMAGE)
        try:
            expected = ours.image("Z", "forward")
        except KeyError:  # a file without Z: its first image is the frame's image
            expected = ours.images[0]
        assert stored.units == expected.unit
        assert stored.images.dtype == np.float32
        np.testing.assert_array_equal(stored.images[0], expected.data)


def test_importing_the_same_files_again_adds_nothing(imported, tiled_server, capsys) -> None:
    before = _count(tiled_server)
    assert main(["import", *map(str, imported.files), "--session", "another",
                 *imported.where]) == 0
    out = capsys.readouterr().out
    assert out.count("already in Tiled") == len(imported.files) and "imported nothing" in out
    assert _count(tiled_server) == before


def _bad_files(folder: Path) -> dict[str, bytes]:
    sxm = SXM_GENERIC5.read_bytes()
    made = synthetic_createc(folder / "made.dat", nx=64, ny=64, seed=6)
    dat = bytearray(made.read_bytes())
    made.unlink()
    dat[16384 + 2:16384 + 400] = bytes(range(256)) + bytes(142)  # the zlib stream, mangled
    files = {
        "truncated.sxm": sxm[:-1000],
        "no_end.sxm": sxm[: sxm.index(b":SCANIT_END:")],
        "extra_bytes.sxm": sxm + bytes(8),
        "broken_zlib.dat": bytes(dat),
        "not_gwy.gwy": b"this is a text file, not a Gwyddion file\n",
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    with pytest.raises(zlib.error):
        zlib.decompress(bytes(dat[16384:]))
    return files


REASONS = {"truncated.sxm": "truncated", "no_end.sxm": ":SCANIT_END:",
           "extra_bytes.sxm": "wrong byte count", "broken_zlib.dat": "zlib",
           "not_gwy.gwy": "not a Gwyddion"}


def test_bad_files_each_give_one_line_and_leave_no_run(imported, tiled_server, tiled_client,
                                                      tmp_path, capsys) -> None:
    bad = _bad_files(tmp_path)
    good = write_sxm(tmp_path / "good.sxm", acquired_like(32, seed=7))
    before = _count(tiled_server)
    for name in bad:  # one at a time: nothing is written
        assert main(["import", str(tmp_path / name), *imported.where]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        assert err[0].startswith(f"spm-bluesky import: {tmp_path / name}: ")
        assert REASONS[name] in err[0]
        assert _count(tiled_server) == before
    # All together with a good file: the good one is imported, the bad ones named.
    session = f"mixed-{uuid.uuid4().hex[:8]}"
    paths = [str(tmp_path / name) for name in bad] + [str(good)]
    assert main(["import", *paths, "--session", session, *imported.where]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == len(bad)
    assert _count(tiled_server) == before + 1
    assert list(_imported_runs(tiled_client, session)) == [str(good)]


def test_files_of_one_layout_share_a_run(tiled_client, tmp_path: Path) -> None:
    from spm_bluesky.commandline.files import import_files

    files = [write_sxm(tmp_path / f"f{i}.sxm", acquired_like(16, seed=100 + i)) for i in range(3)]
    lines: list[str] = []
    session = f"grouped-{uuid.uuid4().hex[:8]}"
    result = import_files(tiled_client, [*files, files[0]], session, log=lines.append,
                          files_per_run=2)
    assert not result.failed and len(set(result.stored.values())) == 2
    assert result.skipped == {str(files[0]): ""}  # given twice: stored once
    assert [line for line in lines if line.startswith("[4/4]")] == [
        f"[4/4] {files[0]}: the same bytes as a file before it, skipped"]
    assert sum(line.startswith("stored run") for line in lines) == 2
    runs = _imported_runs(tiled_client, session)
    first = tiled_client[runs[str(files[0])]]
    assert runs[str(files[0])] == runs[str(files[1])] != runs[str(files[2])]
    stack = read_array_stream(first, schema.SCAN_IMAGE)
    assert list(stack.seq_num) == [1, 2]
    for i in range(2):
        np.testing.assert_array_equal(stack.images[i], read_scan(files[i]).image("Z").data)


def _same_scan(original: ScanFile, back: ScanFile) -> None:
    assert back.scan_metadata() == original.scan_metadata()
    assert len(back.images) == len(original.images)
    for ours, theirs in zip(original.images, back.images, strict=True):
        assert theirs.data.dtype == np.float32
        np.testing.assert_array_equal(theirs.data, ours.data)


@pytest.mark.parametrize("path, fmt", [*((p, "sxm") for p in SXM_FILES), (GWY_GWYDDION, "gwy")],
                         ids=lambda v: getattr(v, "name", v))
def test_round_trip_through_tiled(imported, path: Path, fmt: str, tmp_path: Path,
                                  capsys) -> None:
    uid = imported.runs[path]
    assert main(["export", uid, "--format", fmt, "--out", str(tmp_path), *imported.where]) == 0
    [written] = list(tmp_path.iterdir())
    assert written.name == path.name  # the source file's name again
    original, back = read_scan(path), read_scan(written)
    _same_scan(original, back)
    if fmt == "gwy":
        assert back.header == original.header


def test_export_of_a_whole_session_writes_every_file(imported, tmp_path: Path, capsys) -> None:
    assert main(["export", imported.session[:12], "--format", "gwy", "--out", str(tmp_path),
                 *imported.where]) == 0
    assert sorted(p.stem for p in tmp_path.iterdir()) == sorted(p.stem for p in imported.files)
    assert f"wrote {len(imported.files)} .gwy files" in capsys.readouterr().out
    assert main(["export", "no-such-thing", "--format", "gwy", "--out", str(tmp_path),
                 *imported.where]) == 1
    assert "no session 'no-such-thing'" in capsys.readouterr().err


def test_report_and_replay_read_the_imported_session(imported, tiled_client, tmp_path,
                                                     capsys) -> None:
    from spm_bluesky.report import load_session

    data = load_session(tiled_client, imported.session)
    assert len(data.images) == len(imported.files)
    assert {r.run_uid for r in data.images} == set(imported.runs.values())
    assert all(r.imported and r.verdict == "imported" for r in data.images)
    assert {r.source for r in data.images} == set(map(str, imported.files))
    assert main(["report", imported.session, "--out", str(tmp_path), *imported.where]) == 0
    assert (tmp_path / f"session-{imported.session}.png").stat().st_size > 0
    html = (tmp_path / f"session-{imported.session}.html").read_text()
    assert re.search(rf"imported images \(no verdict\)</th><td [^>]*>{len(imported.files)}<",
                     html), "the report counts the imported images"
    capsys.readouterr()
    assert main(["replay", imported.session, *imported.where]) == 0
    out = capsys.readouterr().out
    n = len(imported.files)
    assert f"Session {imported.session}: 0 images judged by the assessor, {n} imported " \
           "images re-assessed" in out
    rows = {line.split(" | ")[1]: line for line in out.splitlines()
            if line.startswith("| ") and line.endswith(" | imported |")}
    assert set(rows) == set(map(str, imported.files)), out  # every imported image, listed
    for path, line in rows.items():
        verdict = line.split(" | ")[5]
        if Path(path).suffix in {".sxm", ".dat"}:  # topographs in metres: a p(good) each
            assert 0.0 <= float(verdict) <= 1.0, line
        else:  # the .gwy's field is unitless and 128 m wide: refused, saying why
            assert verdict.startswith("not assessed: height range"), line
    assert f"{sum(Path(p).suffix != '.gwy' for p in rows)} assessed" in out


def test_a_run_tiled_refuses_part_way_is_deleted(tiled_client, monkeypatch) -> None:
    from spm_bluesky.formats.to_run import scan_documents
    from spm_bluesky.storage import importer

    real = importer.make_writer

    def failing_writer(client: Any, **kwargs: Any) -> Any:
        writer = real(client, **kwargs)

        def write(name: str, doc: Any) -> None:
            if name == "stop":
                raise RuntimeError("the disk is full")
            writer(name, doc)

        return write

    monkeypatch.setattr(importer, "make_writer", failing_writer)
    run = scan_documents([acquired_like(16, seed=3).replace(source="x.sxm", sha256="f" * 64)],
                         "s")
    with pytest.raises(StoreFailed, match=r"the disk is full.*nothing of it was kept"):
        store_run(tiled_client, run.documents)
    assert not len(tiled_client.search(Eq("start.uid", run.uid)))


@pytest.mark.skipif(MISSING is not None, reason=MISSING or "")
def test_gwyddion_opens_every_export_of_an_acquired_session(
        RE, start_ioc, tiled_server, tmp_path, monkeypatch, capsys) -> None:
    from ophyd_async.core import init_devices

    from spm_bluesky.devices.stm import STM
    from spm_bluesky.plans import survey
    from spm_bluesky.storage import make_writer
    from tests.unit.test_formats_gwyddion import _assert_gwyddion_sees, _thumbnail

    ioc = start_ioc(seed=4)
    with init_devices():
        stm = STM(ioc.prefix, name="stm", sim=True)
    client = connect(tiled_server.uri, tiled_server.api_key)
    RE.subscribe(make_writer(client))
    session = f"acquired-{uuid.uuid4().hex[:8]}"
    RE(survey(stm, 3, size=20e-9, pixels=32, session_uid=session))
    [uid] = list(client.search(Eq(schema.SESSION_UID_QUERY, session)))
    stored = read_array_stream(client[uid], schema.SCAN_IMAGE)
    where = _where(tiled_server, monkeypatch)
    for fmt in ("gwy", "sxm"):
        out = tmp_path / fmt
        assert main(["export", session, "--format", fmt, "--out", str(out), *where]) == 0
        files = sorted(out.iterdir())
        assert len(files) == 3
        for path, image in zip(files, stored.images, strict=True):
            scan = read_scan(path)
            assert scan.size_m == (20e-9, 20e-9) and scan.images[0].unit == "m"
            np.testing.assert_array_equal(scan.images[0].data, image)
            _assert_gwyddion_sees(scan, path)
            assert _thumbnail(path, tmp_path).std() > 1


def test_the_project_server_serves_a_folder_of_real_files(tmp_path: Path) -> None:
    folder = tmp_path / "stm"
    folder.mkdir()
    for path in SXM_FILES:
        shutil.copy(path, folder / path.name)
    synthetic_createc(folder / "A230102.030405.dat", nx=32, ny=32, seed=8)
    (folder / "broken.sxm").write_bytes(SXM_GENERIC5.read_bytes()[:-1000])
    with start_server(TiledConfig(tmp_path / "tiled", files_dir=folder)) as server:
        files = connect_files(server.uri, server.api_key)
        assert set(files) == {"A151216", "Au_mica_2023_Y_A_diPAMY_20230512_058", "A230102"}
        for path in SXM_FILES:
            ours = read_scan(path)
            node = files[path.name.split(".")[0]]
            array = node.read()
            assert array.dtype == np.float32
            for i, image in enumerate(ours.images):
                np.testing.assert_array_equal(array[i], image.data)
            assert dict(node.metadata["header"]) == ours.header
        runs = server.client()  # the runs catalog is still the root, and still writable
        assert store_run(runs, _one_run().documents) in runs


def _one_run() -> Any:
    from spm_bluesky.formats.to_run import scan_documents

    scan = acquired_like(16, seed=1).replace(source="y.sxm", sha256="e" * 64)
    return scan_documents([scan], "served")


def test_up_serve_files_serves_a_folder_of_real_files(tmp_path: Path) -> None:
    """``spm-bluesky up --serve-files DIR``: a Tiled client reads the real .sxm's arrays and
    header from the files node, beside the runs; a restarted Tiled serves them again."""
    import psutil

    from tests.session_helpers import services_up, spm

    folder = tmp_path / "stm"
    folder.mkdir()
    shutil.copy(SXM_GENERIC5, folder / SXM_GENERIC5.name)
    missing = spm("up", "--data-dir", tmp_path / "unused", "--serve-files", tmp_path / "nope")
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
    assert "--serve-files" in missing.stderr and "is not a folder" in missing.stderr
    assert not (tmp_path / "unused" / "services.json").exists()

    ours = read_scan(SXM_GENERIC5)

    def served_equals_ours(state: dict[str, Any]) -> None:
        node = connect_files(state["tiled_uri"], state["api_key"])[SXM_GENERIC5.name.split(".")[0]]
        array = node.read()
        assert array.dtype == np.float32 and len(array) == len(ours.images)
        for i, image in enumerate(ours.images):
            np.testing.assert_array_equal(array[i], image.data)
        assert dict(node.metadata["header"]) == ours.header

    data_dir = tmp_path / "spm-data"
    with services_up(data_dir, "--serve-files", str(folder)) as state:
        assert state["files_dir"] == str(folder.resolve())
        served_equals_ours(state)
        runs = connect(state["tiled_uri"], state["api_key"])  # the runs catalog is the root
        assert store_run(runs, _one_run().documents) in runs
        tiled_pid = state["tiled"]["pid"]
        psutil.Process(tiled_pid).kill()
        psutil.Process(tiled_pid).wait(10)
        again = spm("up", "--data-dir", data_dir)
        assert again.returncode == 0, again.stderr
        assert f"files  {folder.resolve()}" in again.stdout
        served_equals_ours(state)  # same port, same key, the folder served again
