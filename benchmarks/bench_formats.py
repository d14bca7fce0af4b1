"""STM file costs: files per second written and read, at 256 px, for each format.

A frame as the project acquires it (Z and current, forward and backward: four 256x256 float32
images, a header of the real Generic 5 file's size) is written N times and read back N times
per format, from a temporary directory, in one process. The real Generic 5 ``.sxm`` and a
Createc file (512x512, zlib) are read N times as well: the real one from the shared data
folder (``<repo>/../shared/data/formats``) when it is there, else one made by the tests'
``synthetic_createc`` (noise, so its zlib stream is larger than a real scan's: ``made dat``).

With ``--tiled``, also the files per second that ``spm-bluesky import`` stores into an
embedded Tiled server (one run per file, read and checked first) and ``export`` writes back
out of it, for N such 256 px ``.sxm`` files (each with its own data, so none is a duplicate).

Run from the repository root: ``python -m benchmarks.bench_formats`` (a few seconds), or
``python -m benchmarks.bench_formats --tiled`` (a server start and about a minute more).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from functools import partial
from pathlib import Path

import numpy as np

from spm_bluesky.formats import (
    ScanFile,
    ScanImage,
    read_createc,
    read_gwy,
    read_sxm,
    write_gwy,
    write_sxm,
)
from tests.unit._formats_data import (
    CREATEC_NAME,
    SXM_GENERIC5,
    shared_data_file,
    synthetic_createc,
)


def frame(n: int = 256) -> ScanFile:
    """Four n x n float32 images with a real Nanonis header."""
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2e-11, (n, n)).astype(np.float32)
    current = rng.normal(1e-10, 1e-12, (n, n)).astype(np.float32)
    header = read_sxm(SXM_GENERIC5)
    return header.replace(
        images=(
            ScanImage("Z", "forward", "m", z),
            ScanImage("Z", "backward", "m", z[:, ::-1]),
            ScanImage("Current", "forward", "A", current),
            ScanImage("Current", "backward", "A", current[:, ::-1]),
        ),
        date=datetime(2026, 1, 1),
    )


def _write_nth(writer: Callable[[Path, ScanFile], Path], paths: list[Path], scan: ScanFile,
               i: int) -> None:
    writer(paths[i], scan)


def _read_nth(reader: Callable[[Path], ScanFile], paths: list[Path], i: int) -> None:
    reader(paths[i])


def rate(action: Callable[[int], object], n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        action(i)
    return n / (time.perf_counter() - start)


def through_tiled(n: int) -> None:
    """Import N 256 px .sxm files into an embedded Tiled server, then export them."""
    from spm_bluesky.commandline.files import export_runs, import_files
    from spm_bluesky.storage import SessionReader, TiledConfig, start_server

    base = frame()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "in"
        folder.mkdir()
        files = []
        for i in range(n):
            z = np.random.default_rng(i).normal(0, 2e-11, (256, 256)).astype(np.float32)
            images = (ScanImage("Z", "forward", "m", z), *base.images[1:])
            files.append(write_sxm(folder / f"f{i:04d}.sxm", base.replace(images=images)))
        with start_server(TiledConfig(Path(tmp) / "tiled")) as server:
            client = server.client()
            start = time.perf_counter()
            result = import_files(client, files, "bench", log=lambda line: None)
            imported = n / (time.perf_counter() - start)
            assert len(result.stored) == n, result.failed
            runs = list(SessionReader(client, "bench"))
            print(f"{'Tiled':<8} {'imported/s':>10} {'exported/s':>10}")
            print(f"{'import':<8} {imported:>10.1f} {'':>10}")
            for fmt in ("sxm", "gwy"):
                start = time.perf_counter()
                written = export_runs(runs, fmt, Path(tmp) / fmt, log=lambda line: None)
                exported = n / (time.perf_counter() - start)
                assert len(written) == n
                print(f"{'to ' + fmt:<8} {'':>10} {exported:>10.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=50, help="files per measurement (default 50)")
    parser.add_argument("--tiled", action="store_true",
                        help="also import into and export from an embedded Tiled server")
    args = parser.parse_args()
    n = args.n
    scan = frame()
    print(f"{platform.node()}: Python {platform.python_version()}, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.1f}; {n} files per measurement, 256 px, 4 images per file")
    print(f"{'format':<8} {'written/s':>10} {'read/s':>10} {'file size':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for suffix, writer, reader in (("sxm", write_sxm, read_sxm), ("gwy", write_gwy, read_gwy)):
            paths = [Path(tmp) / f"f{i}.{suffix}" for i in range(n)]
            written = rate(partial(_write_nth, writer, paths, scan), n)
            read = rate(partial(_read_nth, reader, paths), n)
            size = paths[0].stat().st_size / 1e6
            print(f"{suffix:<8} {written:>10.1f} {read:>10.1f} {size:>8.2f} MB")
    with tempfile.TemporaryDirectory() as tmp:
        createc = shared_data_file(CREATEC_NAME)
        made = createc is None
        if createc is None:
            createc = synthetic_createc(Path(tmp) / CREATEC_NAME, nx=512, ny=512, seed=0)
        for label, path, real_reader in (
            ("real sxm", SXM_GENERIC5, read_sxm),
            ("made dat" if made else "real dat", createc, read_createc),
        ):
            read = rate(partial(_read_nth, real_reader, [path] * n), n)
            print(f"{label:<8} {'':>10} {read:>10.1f} {path.stat().st_size / 1e6:>8.2f} MB")
    if args.tiled:
        through_tiled(n)


if __name__ == "__main__":
    main()
