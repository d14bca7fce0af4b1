"""An empty SQLite catalog for each new data directory, copied instead of initialised.

Tiled initialises a new SQLite catalog (its tables and Alembic stamp) in a subprocess of its
own, ``tiled catalog init``: about 8 s of CPU on a 2-core VM, paid by every ``up``, ``demo``
and test server on a fresh data directory. The empty catalog is the same every time for one
Tiled version, so it is made once per version, kept in the user's cache directory
(``$XDG_CACHE_HOME/spm-bluesky``, else ``~/.cache/spm-bluesky``), and copied. If it cannot be
made or copied, nothing is placed and Tiled initialises the catalog itself, as before.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

logger = logging.getLogger(__name__)

#: Seconds the one-off ``tiled catalog init`` may take.
INIT_TIMEOUT_S = 120


def template_directory() -> Path:
    """Where the empty catalogs are kept."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "spm-bluesky"


def template_path() -> Path:
    """The empty catalog of the installed Tiled version."""
    return template_directory() / f"catalog-tiled-{version('tiled')}.db"


def _make_template(path: Path) -> None:
    """Initialise an empty catalog with Tiled's own command, then move it to ``path`` in one
    step (two processes making it at once each move a whole file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".catalog-", suffix=".db")
    os.close(fd)
    os.unlink(temporary)  # tiled creates the file itself
    try:
        subprocess.run([sys.executable, "-m", "tiled", "catalog", "init", "--if-not-exists",
                        f"sqlite:///{temporary}"], check=True, capture_output=True,
                       stdin=subprocess.DEVNULL, timeout=INIT_TIMEOUT_S)
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)


def place_empty_catalog(destination: Path) -> bool:
    """Copy an empty catalog of this Tiled version to ``destination`` (which must not exist);
    True if placed, False if Tiled is to initialise it (logged at debug level)."""
    if destination.exists():
        raise FileExistsError(f"{destination} exists: a catalog is only placed in a new data "
                              "directory")
    template = template_path()
    try:
        if not template.is_file():
            _make_template(template)
        partial = destination.with_name(destination.name + ".partial")
        shutil.copyfile(template, partial)
        os.replace(partial, destination)
    except (OSError, subprocess.SubprocessError) as err:
        logger.debug("no empty catalog copied to %s (%s); Tiled initialises it", destination,
                     err)
        return False
    return True
