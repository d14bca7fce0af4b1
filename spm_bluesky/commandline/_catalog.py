"""The Tiled catalog a reading command (``report``, ``replay``, ``run --resume``) uses, and
session uids given in short (a unique prefix, like a git hash).

The catalog is the server given by ``--tiled-uri`` (API key from
:func:`~spm_bluesky.services.credentials.tiled_api_key`), else the one ``spm-bluesky up``
runs for the data directory, else an embedded server started over that directory's Tiled
data for the duration of the command.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spm_bluesky.services.credentials import CredentialsError, tiled_api_key
from spm_bluesky.services.launch import DEFAULT_DATA_DIR, HOME_ENV, TILED_DIR, ServiceState

#: Candidates named when a short session uid is ambiguous.
SHOWN_CANDIDATES = 10


class CatalogUnavailable(RuntimeError):
    """No Tiled server to read from, with what to do about it."""


class SessionLookupError(LookupError):
    """A session uid (or prefix) that names no session, or more than one."""


@dataclass(frozen=True)
class Catalog:
    """A Tiled catalog of runs and, for messages, where it is."""

    client: Any
    where: str
    #: Options that name the same catalog again (for the hints in messages).
    options: str


def tiled_data(data_dir: Path) -> bool:
    """True if ``data_dir`` holds Tiled data (an embedded server's catalog)."""
    return (data_dir / TILED_DIR / "catalog.db").is_file()


@contextlib.contextmanager
def open_catalog(data_dir: Path, uri: str | None = None,
                 key_file: Path | None = None) -> Iterator[Catalog]:
    """The Tiled catalog of runs to read a session from (see the module docstring)."""
    from spm_bluesky.storage import TiledConfig, connect, start_server, unreachable

    if uri:
        try:
            key = tiled_api_key(key_file=key_file, data_dir=data_dir, uri=uri)
        except CredentialsError as err:
            raise CatalogUnavailable(str(err)) from None
        if not key:
            raise CatalogUnavailable(f"--tiled-uri {uri} needs an API key: --api-key-file "
                                     "or $SPM_TILED_API_KEY")
        if why := unreachable(uri):
            raise CatalogUnavailable(f"cannot read from Tiled at {uri}: {why}")
        yield Catalog(connect(uri, key), f"Tiled at {uri}", f" --tiled-uri {uri}")
        return
    options = f" --data-dir {data_dir}"
    state = ServiceState.read(data_dir)
    if state is not None and state.tiled.alive():
        yield Catalog(connect(state.tiled_uri, state.api_key), f"Tiled at {state.tiled_uri}",
                      options)
        return
    if not tiled_data(data_dir):
        raise CatalogUnavailable(
            f"no Tiled data in {data_dir / TILED_DIR}: give --data-dir (the demo's or `up`'s "
            f"data directory; default ${HOME_ENV}, else ./{DEFAULT_DATA_DIR}) or --tiled-uri")
    with start_server(TiledConfig(data_dir / TILED_DIR)) as server:
        yield Catalog(server.client(), f"the Tiled data in {data_dir / TILED_DIR}", options)


def _sessions_starting(client: Any, prefix: str) -> list[str]:
    """The session uids that start with ``prefix``."""
    from tiled.queries import Like

    found = client.search(Like("start.session_uid", f"{prefix}%"))
    distinct = found.distinct("start.session_uid", counts=False)
    values = [item["value"] for item in distinct["metadata"].get("start.session_uid", [])]
    return sorted(value for value in values
                  if isinstance(value, str) and value.startswith(prefix))


def resolve_session(catalog: Catalog, text: str) -> str:
    """The full uid of the session ``text`` names: the uid itself or a unique prefix.

    Raises SessionLookupError naming the candidates if the prefix is ambiguous, or how to
    list the sessions if none matches.
    """
    from tiled.queries import Eq

    if len(catalog.client.search(Eq("start.session_uid", text))):
        return text
    candidates = [] if not text or "%" in text or "_" in text else (
        _sessions_starting(catalog.client, text))
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        shown = ", ".join(candidates[:SHOWN_CANDIDATES])
        more = (f" and {len(candidates) - SHOWN_CANDIDATES} more"
                if len(candidates) > SHOWN_CANDIDATES else "")
        raise SessionLookupError(f"session {text!r} is ambiguous in {catalog.where}: "
                                 f"{shown}{more}; give more characters")
    raise SessionLookupError(
        f"no session {text!r} in {catalog.where}: `spm-bluesky report --list"
        f"{catalog.options}` shows the newest sessions")
