"""STM image files in and out: Nanonis ``.sxm``, Createc ``.dat`` and Gwyddion ``.gwy``.

Every reader returns a :class:`ScanFile` (channels, directions, physical size in metres,
pixels, centre, angle, bias, setpoint, date, the file's whole header, its path and sha256);
every failure to read is one :class:`ScanFormatError` whose message is one line naming the
file and the reason.

>>> scan = read_scan("A151216.123306-02602.sxm")      # doctest: +SKIP
>>> scan.image("Z", "forward").data.shape             # doctest: +SKIP
>>> write_gwy("out.gwy", scan)                        # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from ._model import DIRECTIONS, Direction, ScanFile, ScanFormatError, ScanImage, file_sha256
from .createc import read_createc
from .gwy import read_gwy, write_gwy
from .sxm import read_sxm, write_sxm

#: Readers by the first bytes of a file (the extension is not trusted).
_READERS = (
    (b":NANONIS_VERSION:", read_sxm),
    (b"[Paramco32]", read_createc),
    (b"[Paramet32]", read_createc),
    (b"[Parameter]", read_createc),
    (b"GWYP", read_gwy),
    (b"GWYO", read_gwy),
)
_BY_SUFFIX = {".sxm": read_sxm, ".dat": read_createc, ".gwy": read_gwy}
SUFFIXES = tuple(_BY_SUFFIX)


def read_scan(path: str | Path) -> ScanFile:
    """Read any supported STM image file, recognised by its first bytes."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            start = f.read(32)
    except OSError as exc:
        raise ScanFormatError(path, exc.strerror or str(exc)) from None
    for magic, reader in _READERS:
        if start.startswith(magic):
            return reader(path)
    if path.suffix.lower() in _BY_SUFFIX:
        return _BY_SUFFIX[path.suffix.lower()](path)
    raise ScanFormatError(path, "not a Nanonis .sxm, Createc .dat or Gwyddion .gwy file")


__all__ = [
    "DIRECTIONS",
    "SUFFIXES",
    "Direction",
    "ScanFile",
    "ScanFormatError",
    "ScanImage",
    "file_sha256",
    "read_createc",
    "read_gwy",
    "read_scan",
    "read_sxm",
    "write_gwy",
    "write_sxm",
]
