"""Bad input: each gives one ScanFormatError whose message is one line naming file and reason."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from spm_bluesky.formats import ScanFormatError, read_scan
from tests.unit._formats_data import GWY_GWYDDION, SXM_GENERIC5, synthetic_createc


def _createc_bytes(tmp_path: Path) -> bytes:
    """A small Createc file made here (the real one is not in the repository)."""
    return synthetic_createc(tmp_path / "made.dat").read_bytes()


def _truncated_sxm(raw: bytes) -> bytes:
    return raw[: len(raw) - 1000]


def _no_end_tag(raw: bytes) -> bytes:
    return raw.replace(b":SCANIT_END:", b":SCANIT_XXX:")


def _extra_bytes(raw: bytes) -> bytes:
    return raw + b"\0" * 8


def _cut_in_header(raw: bytes) -> bytes:
    return raw[:2000]


def _broken_zlib(raw: bytes) -> bytes:
    data = bytearray(raw)
    data[16384 + 2 : 16384 + 400] = b"\xff" * 398
    return bytes(data)


def _short_zlib(raw: bytes) -> bytes:
    return raw[:16384] + zlib.compress(b"\0" * 64)


def _not_gwy(raw: bytes) -> bytes:
    return b"GWYP" + b"\x13" * 100


_Source = Callable[[Path], bytes]


def _file(path: Path) -> _Source:
    return lambda tmp_path: path.read_bytes()


CASES: list[tuple[str, _Source, Callable[[bytes], bytes], str, str]] = [
    ("truncated sxm", _file(SXM_GENERIC5), _truncated_sxm, ".sxm", "truncated: "),
    ("sxm cut inside header", _file(SXM_GENERIC5), _cut_in_header, ".sxm", "no :SCANIT_END:"),
    ("no SCANIT_END", _file(SXM_GENERIC5), _no_end_tag, ".sxm", "no :SCANIT_END:"),
    ("wrong byte count", _file(SXM_GENERIC5), _extra_bytes, ".sxm", "wrong byte count: "),
    ("broken zlib", _createc_bytes, _broken_zlib, ".dat", "broken zlib stream"),
    ("short createc data", _createc_bytes, _short_zlib, ".dat", "wrong byte count: "),
    ("createc cut in header", _createc_bytes, _cut_in_header, ".dat", "truncated: "),
    ("gwy that is not one", _file(GWY_GWYDDION), _not_gwy, ".gwy", "corrupt .gwy"),
    ("text called .gwy", _file(GWY_GWYDDION), lambda raw: b"hello\n", ".gwy",
     "not a Gwyddion .gwy"),
    ("text called .sxm", _file(SXM_GENERIC5), lambda raw: b"hello\n", ".sxm",
     "not a Nanonis .sxm"),
    ("text called .dat", _createc_bytes, lambda raw: b"hello\n", ".dat", "not a Createc .dat"),
]


@pytest.mark.parametrize(("source", "spoil", "suffix", "reason"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line(
    source: _Source, spoil: Callable[[bytes], bytes], suffix: str, reason: str, tmp_path: Path
) -> None:
    raw = source(tmp_path)
    good = tmp_path / f"good{suffix}"
    good.write_bytes(raw)
    read_scan(good)  # the unspoilt bytes read: the error below is the spoiling's
    bad = tmp_path / f"bad{suffix}"
    bad.write_bytes(spoil(raw))
    with pytest.raises(ScanFormatError) as caught:
        read_scan(bad)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{bad}: ")
    assert reason in message, message
    assert caught.value.path == str(bad)


def test_missing_file_is_a_format_error(tmp_path: Path) -> None:
    with pytest.raises(ScanFormatError, match="No such file"):
        read_scan(tmp_path / "absent.sxm")


def test_unknown_format(tmp_path: Path) -> None:
    other = tmp_path / "image.png"
    other.write_bytes(b"\x89PNG\r\n")
    with pytest.raises(ScanFormatError, match=r"not a Nanonis \.sxm, Createc \.dat or Gwyddion"):
        read_scan(other)
