"""Checks before the instrument moves: can the session make its documents durable?

:func:`check_durable` is called before any PV is written: the journal directory can be
created and written (a file is written, fsynced and removed there), and the disk holding
it has at least ``min_free_bytes`` free. A failing check raises
:class:`~spm_bluesky.storage.journal.JournalError` with what to do; nothing has moved yet.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from spm_bluesky.storage.journal import JournalError, journal_dir

#: Free disk space a session needs in its data directory before it starts (bytes).
MIN_FREE_BYTES = 512 * 1024 * 1024
_PROBE = ".preflight"


def check_durable(data_dir: Path | str, min_free_bytes: int = MIN_FREE_BYTES) -> Path:
    """Raise JournalError unless the journal of ``data_dir`` can be written with room to
    spare; return the journal directory."""
    directory = journal_dir(data_dir)
    probe = directory / _PROBE
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"ok")
            os.fsync(fd)
        finally:
            os.close(fd)
        probe.unlink()
    except OSError as err:
        raise JournalError(f"cannot write the journal in {directory}: {err.strerror}; give "
                           "a --data-dir that can be written") from None
    free = shutil.disk_usage(directory).free
    if free < min_free_bytes:
        raise JournalError(f"only {free / 2**20:.0f} MiB free where the journal goes "
                           f"({directory}); a session needs at least "
                           f"{min_free_bytes / 2**20:.0f} MiB: free some space first")
    return directory
