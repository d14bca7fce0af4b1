"""The local journal: every document made durable on disk before the RunEngine moves on.

A :class:`Journal` is a RunEngine subscriber that appends each ``(name, doc)`` to an
append-only file in the data directory and fsyncs it before returning, so a kill of the
session loses at most the document being written, whatever Tiled is doing. Tiled is filled
from the journal in the background (:mod:`spm_bluesky.storage.drain`). Besides documents the
journal holds *marks*: safety records a plan makes durable before the instrument acts again
(a crash and its exclusion zone), read back on resume (:func:`read_marks`).

On disk (``<data dir>/journal/``):

- ``seg-00000001.jnl``, ``seg-00000002.jnl`` ...: segments, appended in order. Each process
  that opens the journal starts a new segment (and a full one is rolled over), so only the
  newest segment ever grows; a torn record at the end of an older one is a kill mid-write and
  is skipped.
- a record is ``b"SPMJ"``, the payload's length and its CRC-32 (``<4sII``), then the payload:
  msgpack of ``{"k": "doc"|"mark", "n": name, "d": body}``. numpy arrays travel as msgpack
  extension type 1 (dtype, shape, raw bytes): images keep their bits, and nothing is pickled.
- ``cursor.json``: how far Tiled has acknowledged (written by the drain, see there).
- ``lock``: held (``flock``) by the one process writing the journal.

Opening a journal closes the runs an earlier process left open (a kill, an outage that
ended the process): each gets a stop document with ``exit_status="abort"`` and a reason.

With ``prune=True`` (the embedded default, where the drain's cursor says what Tiled holds)
segments go once Tiled holds them (:meth:`Journal.prune`, when the journal is opened and
when a segment is rolled over): a segment wholly before the cursor whose runs are all closed
there is deleted, oldest first, after its marks are copied to the newest segment (resume
reads every mark, and a mark may be the only record of a crash). Facility mode keeps every
segment: its cursor says what the broker confirmed, not what Tiled holds.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import struct
import time
import uuid
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, BinaryIO, cast

import msgpack
import numpy as np
from event_model.documents import Document

#: The journal's directory inside the data directory.
JOURNAL_DIR = "journal"
CURSOR_FILE = "cursor.json"
LOCK_FILE = "lock"
SEGMENT_GLOB = "seg-*.jnl"
#: A segment is rolled over once it is this big (bytes).
SEGMENT_BYTES = 256 * 1024 * 1024
MAGIC = b"SPMJ"
_HEADER = struct.Struct("<4sII")
#: The largest payload a reader accepts: a length above it is a corrupt header.
MAX_RECORD_BYTES = 1 << 31
_NDARRAY_EXT = 1
#: The reason written into the stop document of a run an earlier process left open.
ABORT_REASON = "left open: the session's process ended before the run's stop document"


class JournalError(RuntimeError):
    """The journal cannot be opened or written (the message says why, for the user)."""


class RecordKind(StrEnum):
    """What a journal record holds."""

    #: A Bluesky document (``name`` is its document name).
    DOCUMENT = "doc"
    #: A safety record (``name`` is its kind, e.g. ``"crash"``).
    MARK = "mark"


@dataclass(frozen=True, order=True)
class Position:
    """A place in the journal: a segment number and a byte offset in it."""

    segment: int
    offset: int


@dataclass(frozen=True)
class Record:
    """One journal record: its kind, name and body, where it starts and where the next does."""

    kind: RecordKind
    name: str
    body: dict[str, Any]
    start: Position
    end: Position


# -- encoding ---------------------------------------------------------------------------------


def _default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise TypeError("arrays of Python objects are not journaled")
        array = np.ascontiguousarray(value)
        header = msgpack.packb([array.dtype.str, list(array.shape)])
        return msgpack.ExtType(_NDARRAY_EXT, header + array.tobytes())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    raise TypeError(f"{type(value).__name__} cannot be journaled")


def _ext_hook(code: int, data: bytes) -> Any:
    if code != _NDARRAY_EXT:
        return msgpack.ExtType(code, data)
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(data)
    dtype, shape = unpacker.unpack()
    raw = data[unpacker.tell():]
    return np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(shape).copy()


def encode(kind: RecordKind, name: str, body: Mapping[str, Any]) -> bytes:
    """One framed record (header and payload) for ``body``."""
    payload = msgpack.packb({"k": kind.value, "n": name, "d": body}, default=_default,
                            use_bin_type=True)
    return _HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload


def decode_payload(payload: bytes) -> tuple[RecordKind, str, dict[str, Any]]:
    """The kind, name and body of a record's payload."""
    item = msgpack.unpackb(payload, ext_hook=_ext_hook, raw=False, strict_map_key=False)
    return RecordKind(item["k"]), str(item["n"]), item["d"]


# -- the files --------------------------------------------------------------------------------


def journal_dir(data_dir: Path | str) -> Path:
    """The journal directory of a data directory."""
    return Path(data_dir) / JOURNAL_DIR


def segment_path(directory: Path, number: int) -> Path:
    """The file of segment ``number``."""
    return directory / f"seg-{number:08d}.jnl"


def segments(directory: Path) -> list[int]:
    """The segment numbers in ``directory``, oldest first."""
    numbers = []
    for path in Path(directory).glob(SEGMENT_GLOB):
        with contextlib.suppress(ValueError):
            numbers.append(int(path.stem.split("-", 1)[1]))
    return sorted(numbers)


def read_cursor(directory: Path) -> Position:
    """What Tiled has acknowledged (everything before this position); the start if none."""
    try:
        raw = json.loads((Path(directory) / CURSOR_FILE).read_text())
    except FileNotFoundError:
        first = segments(directory)
        return Position(first[0] if first else 1, 0)
    return Position(int(raw["segment"]), int(raw["offset"]))


def write_cursor(directory: Path, position: Position) -> None:
    """Record ``position`` as acknowledged, atomically and durably."""
    path = Path(directory) / CURSOR_FILE
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        json.dump({"segment": position.segment, "offset": position.offset}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_one(f: BinaryIO) -> bytes | None:
    """The next whole record's payload; None at the end or at a torn or corrupt record."""
    header = f.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    magic, length, crc = _HEADER.unpack(header)
    if magic != MAGIC or length > MAX_RECORD_BYTES:
        return None
    payload = f.read(length)
    if len(payload) < length or zlib.crc32(payload) != crc:
        return None
    return payload


def read_records(directory: Path, start: Position | None = None) -> Iterator[Record]:
    """Every whole record from ``start`` (default: the beginning) to the end, in order.

    A torn or corrupt tail ends its segment: in an older segment it is a kill mid-write (the
    rest of that segment is skipped); in the newest it may be a record being written, which
    a later call reads once it is whole.
    """
    directory = Path(directory)
    numbers = [n for n in segments(directory) if start is None or n >= start.segment]
    for number in numbers:
        offset = start.offset if start is not None and number == start.segment else 0
        path = segment_path(directory, number)
        if not path.exists():
            continue
        with open(path, "rb") as f:
            f.seek(offset)
            while True:
                payload = _read_one(f)
                if payload is None:
                    break
                end = f.tell()
                kind, name, body = decode_payload(payload)
                yield Record(kind, name, body, Position(number, offset), Position(number, end))
                offset = end


def _prunable(directory: Path, cursor: Position) -> tuple[list[int], list[Record]]:
    """The oldest segments wholly before ``cursor`` whose runs are all closed before it,
    and the marks in them."""
    candidates = [n for n in segments(directory) if n < cursor.segment]
    if not candidates:
        return [], []
    opened_in: dict[str, int] = {}  # run uid -> the segment of its start, while open
    marks: list[Record] = []
    for record in read_records(directory, Position(candidates[0], 0)):
        if record.start >= cursor:
            break
        if record.kind is RecordKind.MARK:
            if record.start.segment in candidates:
                marks.append(record)
        elif record.name == "start":
            opened_in[record.body["uid"]] = record.start.segment
        elif record.name == "stop":
            opened_in.pop(record.body["run_start"], None)
    oldest_open = min(opened_in.values(), default=cursor.segment)
    keep_from = min(oldest_open, cursor.segment)
    prunable = [n for n in candidates if n < keep_from]
    return prunable, [m for m in marks if m.start.segment in prunable]


def read_marks(directory: Path, name: str | None = None) -> list[Record]:
    """The safety records in the journal (of one kind, if ``name``), oldest first."""
    return [record for record in read_records(directory)
            if record.kind is RecordKind.MARK and (name is None or record.name == name)]


def open_runs(directory: Path, start: Position | None = None) -> dict[str, dict[str, Any]]:
    """Run uid -> start document of every run with a start and no stop from ``start`` on."""
    opened: dict[str, dict[str, Any]] = {}
    for record in read_records(directory, start):
        if record.kind is not RecordKind.DOCUMENT:
            continue
        if record.name == "start":
            opened[record.body["uid"]] = record.body
        elif record.name == "stop":
            opened.pop(record.body["run_start"], None)
    return opened


# -- the writer -------------------------------------------------------------------------------


class Journal:
    """The append-only journal of one data directory, open for writing (one process at a time).

    Call it as a RunEngine subscriber (``RE.subscribe(journal)``): each document is written
    and fsynced before the call returns. ``sync=False`` skips the fsync (tests, benchmarks of
    the cost). ``prune`` deletes the segments Tiled holds (:meth:`prune`) when the journal
    opens and at each rollover: only where the cursor is the drain's. Raises
    :class:`JournalError` if another process holds the journal or the directory cannot be
    written.
    """

    def __init__(self, directory: Path | str, *, sync: bool = True,
                 segment_bytes: int = SEGMENT_BYTES, prune: bool = False) -> None:
        self.directory = Path(directory)
        self.sync = sync
        self.prunes = prune
        self.segment_bytes = segment_bytes
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._lock = open(self.directory / LOCK_FILE, "a")  # noqa: SIM115 (held open)
        except OSError as err:
            raise JournalError(f"cannot write the journal in {self.directory}: "
                               f"{err.strerror}") from None
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            raise JournalError(f"another process writes the journal in {self.directory} "
                               "(is a session already running on this data directory?)"
                               ) from None
        self._fd = -1
        self._segment = 0
        self._size = 0
        self._roll()
        self.closed_runs = self._close_open_runs()
        #: The segments deleted when the journal opened.
        self.pruned = self.prune() if prune else []

    @property
    def position(self) -> Position:
        """Where the next record goes."""
        return Position(self._segment, self._size)

    def _roll(self) -> None:
        rolled = self._fd >= 0
        if rolled:
            os.close(self._fd)
        numbers = segments(self.directory)
        self._segment = (numbers[-1] if numbers else 0) + 1
        path = segment_path(self.directory, self._segment)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        self._size = 0
        self._sync_directory()  # the new file's name is durable too
        if rolled and self.prunes:
            self.prune()

    def _sync_directory(self) -> None:
        if self.sync:
            dir_fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def prune(self) -> list[int]:
        """Delete the segments Tiled holds: the oldest ones wholly before the drain's cursor
        whose runs are all closed before it. Their marks are appended to the newest segment
        first (made durable), so every mark outlives its segment. Returns the numbers
        deleted."""
        prunable, marks = _prunable(self.directory, read_cursor(self.directory))
        for mark in marks:
            self._append(encode(RecordKind.MARK, mark.name, mark.body))
        for number in prunable:
            segment_path(self.directory, number).unlink(missing_ok=True)
        if prunable:
            self._sync_directory()
        return prunable

    def _close_open_runs(self) -> list[str]:
        """Append an aborting stop for each run an earlier process left open; their uids."""
        opened = open_runs(self.directory, read_cursor(self.directory))
        for uid in opened:
            self.append_document("stop", {
                "uid": uuid.uuid4().hex, "time": time.time(), "run_start": uid,
                "exit_status": "abort", "reason": ABORT_REASON, "num_events": {}})
        return list(opened)

    def _append(self, data: bytes) -> None:
        if self._fd < 0:
            raise JournalError(f"the journal in {self.directory} is closed")
        if self._size and self._size + len(data) > self.segment_bytes:
            self._roll()
        written = os.write(self._fd, data)
        while written < len(data):  # a short write (a signal): finish it
            written += os.write(self._fd, data[written:])
        if self.sync:
            os.fdatasync(self._fd)
        self._size += len(data)

    def append_document(self, name: str, doc: Mapping[str, Any]) -> None:
        """Make one document durable."""
        self._append(encode(RecordKind.DOCUMENT, name, doc))

    def mark(self, name: str, data: Mapping[str, Any]) -> None:
        """Make one safety record durable (``name`` its kind; ``data`` plain values)."""
        self._append(encode(RecordKind.MARK, name, {**data, "time": time.time()}))

    def __call__(self, name: str, doc: Document) -> None:
        self.append_document(name, cast("Mapping[str, Any]", doc))

    def close(self) -> None:
        """Close the segment and release the lock (idempotent)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if not self._lock.closed:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
