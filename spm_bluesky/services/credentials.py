"""Where a client finds the Tiled API key: never on a command line, where ``ps`` shows it.

In this order: a key file the user names (``--api-key-file``), ``$SPM_TILED_API_KEY``,
``$TILED_API_KEY``, then the state file ``spm-bluesky up`` wrote in the data directory
(mode 0600). The command line, the IPython profile and the queueserver's worker all use
:func:`tiled_api_key`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

#: Environment variables holding the key, the first set one wins.
API_KEY_ENV = ("SPM_TILED_API_KEY", "TILED_API_KEY")


class CredentialsError(RuntimeError):
    """A named key file cannot be used; the message says why."""


def read_key_file(path: Path | str) -> str:
    """The API key in ``path`` (its first line, stripped); CredentialsError if none."""
    path = Path(path).expanduser()
    try:
        key = path.read_text().strip().splitlines()
    except OSError as err:
        raise CredentialsError(f"cannot read the API key file {path}: {err.strerror}") from None
    if not key or not key[0].strip():
        raise CredentialsError(f"the API key file {path} is empty")
    return key[0].strip()


def tiled_api_key(*, key_file: Path | str | None = None, data_dir: Path | None = None,
                  uri: str | None = None, environ: Mapping[str, str] = os.environ
                  ) -> str | None:
    """The Tiled API key to use, or None if none is configured (see the module docstring).

    ``data_dir`` is where ``spm-bluesky up`` keeps its state file; the key recorded there is
    used last, and for a given ``uri`` only if that is the server the state file records
    (a key is never sent to another server).
    """
    if key_file is not None:
        return read_key_file(key_file)
    for name in API_KEY_ENV:
        if environ.get(name):
            return environ[name]
    if data_dir is not None:
        from spm_bluesky.services.launch import ServiceState

        state = ServiceState.read(data_dir)
        if state is not None and uri in (None, state.tiled_uri):
            return state.api_key
    return None
