"""``spm-bluesky import`` and ``export``: STM image files into Tiled as runs, and back out.

Import reads Nanonis ``.sxm``, Createc ``.dat`` and Gwyddion ``.gwy`` files (a folder gives
its files of those kinds) and stores each as one ``import_file`` run
(:mod:`spm_bluesky.formats.to_run`), all runs of one command in one session, so ``report``
and ``replay`` read them like an acquired session. A file is read and checked whole before
anything of it is written; a file already in the catalog (the same sha256) is skipped; a
file that cannot be read is named with the reason on one line and the others go on (exit
status 1 at the end).

Export writes every image of a session or a run, imported or acquired, as ``.gwy`` or
``.sxm`` files.

The catalog is found as for ``report`` (:mod:`spm_bluesky.commandline._catalog`); import
starts an embedded server over a new data directory where there is none yet.
"""

from __future__ import annotations

import contextlib
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from spm_bluesky import schema
from spm_bluesky.commandline._catalog import (
    Catalog,
    CatalogUnavailable,
    SessionLookupError,
    open_catalog,
    resolve_session,
    tiled_data,
)
from spm_bluesky.commandline._common import PROG, ApiKeyFile, DataDir, choice, fail
from spm_bluesky.services.launch import TILED_DIR, ServiceError

if TYPE_CHECKING:
    from spm_bluesky.formats import ScanFile
    from spm_bluesky.storage import StoredRun

TILED_URI_HELP = "a Tiled server to use instead (API key: --api-key-file or the environment)"
FORMATS = ("gwy", "sxm")


@contextlib.contextmanager
def writable_catalog(data_dir: Path, uri: str | None, key_file: Path | None
                     ) -> Iterator[Catalog]:
    """The catalog to import into: as for ``report``, or a new embedded one in ``data_dir``."""
    from spm_bluesky.storage import TiledConfig, start_server

    if uri or tiled_data(data_dir):
        with open_catalog(data_dir, uri, key_file) as catalog:
            yield catalog
        return
    with start_server(TiledConfig(data_dir / TILED_DIR)) as server:
        yield Catalog(server.client(), f"the new Tiled data in {data_dir / TILED_DIR}",
                      f" --data-dir {data_dir}")


def expand_paths(paths: list[Path]) -> list[Path]:
    """The files named: each file as given, a folder's STM files (by suffix) sorted by name."""
    from spm_bluesky.formats import SUFFIXES

    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*")
                                if p.is_file() and p.suffix.lower() in SUFFIXES))
        else:
            files.append(path)
    return files


#: Files per import run at most: a run's arrays are held in memory until it is written.
FILES_PER_RUN = 100


@dataclass
class ImportResult:
    """What an import did: file -> run uid for the files stored, file -> the run already
    holding its bytes for the files skipped ('' for a repeat within the import), file ->
    reason for the files that failed."""

    session_uid: str
    stored: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)


def import_files(client: Any, files: list[Path], session_uid: str,
                 log: Callable[[str], object] = print,
                 files_per_run: int = FILES_PER_RUN) -> ImportResult:
    """Store ``files`` as ``import_files`` runs of ``session_uid``: one event per file, one
    run per layout (files from one instrument with the same channels and pixels share a run,
    up to ``files_per_run``); one ``log`` line per file and per run.

    Every file is read whole and its run composed (and validated by event-model) before the
    run is written; a write that fails part way is deleted
    (:func:`~spm_bluesky.storage.importer.store_run`) and its files count as failed.
    """
    from spm_bluesky.formats import ScanFormatError, read_scan
    from spm_bluesky.formats.to_run import layout, scan_documents
    from spm_bluesky.storage.importer import StoreFailed, find_imported, store_run

    result = ImportResult(session_uid)
    pending: dict[tuple[Any, ...], list[ScanFile]] = {}
    seen: set[str] = set()

    def store(scans: list[ScanFile]) -> None:
        counter = len(result.stored) + 1
        try:
            uid = store_run(client, scan_documents(scans, session_uid, counter).documents)
        except (StoreFailed, ValueError) as err:
            for scan in scans:
                result.failed[str(scan.source)] = str(err).splitlines()[0]
            log(f"FAILED to store {len(scans)} files: {str(err).splitlines()[0]}")
            return
        result.stored.update((str(scan.source), uid) for scan in scans)
        log(f"stored run {uid[:8]} ({len(scans)} files)")

    width = len(str(len(files)))
    for n, path in enumerate(files, 1):
        step = f"[{n:>{width}}/{len(files)}] {path}"
        try:
            scan = read_scan(path)
        except ValueError as err:  # ScanFormatError, or a file whose images do not fit together
            reason = err.reason if isinstance(err, ScanFormatError) else str(err)
            result.failed[str(path)] = reason
            log(f"{step}: FAILED: {reason}")
            continue
        assert scan.sha256 is not None  # every reader sets it
        if scan.sha256 in seen:
            result.skipped[str(path)] = ""
            log(f"{step}: the same bytes as a file before it, skipped")
            continue
        earlier = find_imported(client, scan.sha256)
        if earlier is not None:
            result.skipped[str(path)] = earlier
            log(f"{step}: already in Tiled (run {earlier[:8]}), skipped")
            continue
        seen.add(scan.sha256)
        group = pending.setdefault(layout(scan), [])
        group.append(scan)
        nx, ny = scan.pixels
        log(f"{step}: {scan.format}, {nx}x{ny}, {len(scan.images)} images")
        if len(group) >= files_per_run:
            store(pending.pop(layout(scan)))
    for group in pending.values():
        store(group)
    return result


def import_command(
    paths: list[Path] = typer.Argument(..., metavar="PATH...", show_default=False,
                                       help=".sxm, .dat or .gwy files, or folders of them"),
    session: str | None = typer.Option(
        None, metavar="NAME", show_default=False,
        help="session uid the runs join (default: a new one); the same name adds to it"),
    data_dir: Path = DataDir,
    tiled_uri: str | None = typer.Option(None, help=TILED_URI_HELP, show_default=False),
    api_key_file: Path | None = ApiKeyFile,
) -> int:
    """Import STM image files into Tiled as runs of one session.

    Nanonis .sxm (generations 4 and 5), Createc .dat and Gwyddion .gwy. Each file becomes one
    event laid out as an acquired image (files of one layout share a run), its source path,
    sha256 and header in the start document. A file already imported (same sha256) is
    skipped; a file that cannot be read is named with the reason and the others still import
    (exit status 1).
    """
    from spm_bluesky.formats import SUFFIXES

    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise typer.BadParameter(f"no such file or folder: {', '.join(missing)}",
                                 param_hint="PATH")
    files = expand_paths(paths)
    if not files:
        raise fail(f"no {'/'.join(SUFFIXES)} files in {', '.join(map(str, paths))}", 2)
    session_uid = session or str(uuid.uuid4())
    try:
        with writable_catalog(data_dir, tiled_uri, api_key_file) as catalog:
            result = import_files(catalog.client, files, session_uid)
            where = catalog.where
    except (CatalogUnavailable, ServiceError) as err:
        raise fail(str(err)) from None
    if result.stored:
        print(f"imported {len(result.stored)} files into {where}, session {session_uid}")
    else:
        print(f"imported nothing into {where}")
    if result.skipped:
        print(f"{len(result.skipped)} files were already there")
    for path, reason in result.failed.items():
        print(f"{PROG} import: {path}: {reason}", file=sys.stderr)
    return 1 if result.failed else 0


def _scans_of_run(run: StoredRun) -> list[tuple[str, ScanFile]]:
    """(file stem, scan) for every image of a stored run; none for a run without images."""
    from spm_bluesky.formats.to_run import SCAN_OBJECT, scan_from_frame, scan_from_import
    from spm_bluesky.storage import read_array_stream

    container = run.container
    if schema.PRIMARY not in container:
        return []
    stream = container[schema.PRIMARY]
    data_keys = stream.base.metadata.get("data_keys", {})
    if schema.SCAN_IMAGE not in data_keys:
        return []
    if run.plan_name == schema.IMPORT_FILES:
        arrays = {key: read_array_stream(container, key)
                  for key, spec in data_keys.items() if spec.get("dtype") == "array"}
        found = []
        for i, seq in enumerate(arrays[schema.SCAN_IMAGE].seq_num):
            index = int(seq) - 1
            scan = scan_from_import(run.start, index,
                                    {key: stack.images[i] for key, stack in arrays.items()})
            found.append((Path(str(scan.source or f"{run.uid}_{index}")).stem, scan))
        return found
    configuration = (stream.base.metadata.get("configuration", {})
                     .get(SCAN_OBJECT, {}).get("data", {}))
    stack = read_array_stream(container, schema.SCAN_IMAGE)
    rows = dict(run.rows(schema.PRIMARY))
    return [(f"{run.plan_name}_{run.uid[:8]}_{int(seq):04d}",
             scan_from_frame(run.start, configuration, rows[int(seq)], image, int(seq), t))
            for image, seq, t in zip(stack.images, stack.seq_num, stack.time, strict=True)]


def _runs(catalog: Catalog, target: str) -> list[StoredRun]:
    """The runs of the session ``target`` names (uid or unique prefix), else the one run it
    names (uid, or a prefix of at least five characters)."""
    from spm_bluesky.storage import SessionReader, StoredRun

    try:
        return list(SessionReader(catalog.client, resolve_session(catalog, target)))
    except SessionLookupError as no_session:
        try:
            return [StoredRun(catalog.client[target])]
        except (KeyError, ValueError):
            raise SessionLookupError(
                f"{no_session}; no run {target!r} either") from None


def export_runs(runs: list[StoredRun], fmt: str, out: Path,
                log: Callable[[str], object] = print) -> list[Path]:
    """Write every image of ``runs`` into ``out`` as ``fmt`` files (one line each to ``log``);
    imported files keep their name, acquired frames are ``<plan>_<run>_<seq_num>``."""
    from spm_bluesky.formats import write_gwy, write_sxm

    writer = {"gwy": write_gwy, "sxm": write_sxm}[fmt]
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    names: set[str] = set()
    for run in runs:
        for stem, scan in _scans_of_run(run):
            name = stem if stem not in names else f"{stem}_{run.uid[:8]}"
            names.add(name)
            written.append(writer(out / f"{name}.{fmt}", scan))
            log(str(written[-1]))
    return written


def export_command(
    target: str = typer.Argument(..., metavar="SESSION_OR_RUN",
                                 help="a run uid, or a session uid or unique prefix of it"),
    fmt: str = typer.Option(..., "--format", parser=choice(*FORMATS), metavar="gwy|sxm",
                            help="file format: gwy (Gwyddion) or sxm (Nanonis)"),
    out: Path = typer.Option(..., metavar="DIR", help="folder for the files (made if missing)"),
    data_dir: Path = DataDir,
    tiled_uri: str | None = typer.Option(None, help=TILED_URI_HELP, show_default=False),
    api_key_file: Path | None = ApiKeyFile,
) -> int:
    """Export every image of a session or a run as .gwy or .sxm files.

    Imported files come back with their channels, scan fields and header; acquired frames
    as one Z image each (metres) with the frame's size, centre, bias, setpoint and date.
    """
    from spm_bluesky.storage import SessionNotFound

    if out.exists() and not out.is_dir():
        raise typer.BadParameter(f"{str(out)!r} is not a directory", param_hint="--out")
    try:
        with open_catalog(data_dir, tiled_uri, api_key_file) as catalog:
            written = export_runs(_runs(catalog, target), fmt, out, log=print)
    except (CatalogUnavailable, SessionLookupError, SessionNotFound, ServiceError) as err:
        raise fail(str(err)) from None
    if not written:
        raise fail(f"no images in {target!r}: its runs hold no {schema.PRIMARY} images")
    print(f"wrote {len(written)} .{fmt} files to {out}")
    return 0


def add_commands(app: typer.Typer) -> None:
    """Add ``import`` and ``export`` to ``app``."""
    app.command("import")(import_command)
    app.command("export")(export_command)
