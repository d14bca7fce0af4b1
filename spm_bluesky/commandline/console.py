"""``spm-bluesky console``: the web console, on 127.0.0.1, behind Tiled's API key.

The Tiled server is ``--tiled-uri`` (the key from ``--api-key-file`` or the environment),
else the one ``spm-bluesky up`` runs for the data directory (its URI and key from the state
file). The key never appears on a command line or in what is printed.
"""

import sys
from pathlib import Path

import typer

from spm_bluesky.commandline._common import ApiKeyFile, DataDir, fail, port, warn
from spm_bluesky.services.credentials import CredentialsError, tiled_api_key
from spm_bluesky.services.launch import LOOPBACK, ServiceError, ServiceState


def _tiled(data_dir: Path, uri: str | None, key_file: Path | None) -> tuple[str, str]:
    """The Tiled URI and key to use (see the module docstring); CommandFailed if none."""
    try:
        state = None if uri else ServiceState.read(data_dir)
        key = tiled_api_key(key_file=key_file, data_dir=data_dir, uri=uri)
    except (CredentialsError, ServiceError) as err:
        raise fail(str(err)) from None
    if uri is None:
        if state is None:
            raise fail(f"no Tiled to read: give --tiled-uri, or start the services with "
                       f"`spm-bluesky up --data-dir {data_dir}`")
        uri = state.tiled_uri
    if not key:
        raise fail(f"--tiled-uri {uri} needs an API key: --api-key-file or $SPM_TILED_API_KEY")
    return uri, key


def console_command(
    data_dir: Path = DataDir,
    tiled_uri: str | None = typer.Option(
        None, help="the Tiled server to read (default: the one `up` runs for --data-dir)",
        show_default=False),
    api_key_file: Path | None = ApiKeyFile,
    host: str = typer.Option(LOOPBACK, help="address to listen on; anything but loopback "
                                            "lets other machines reach the console"),
    port_number: int | None = typer.Option(None, "--port", parser=port,
                                           help="port to listen on (default: a free one)",
                                           show_default=False),
) -> int:
    """Serve the web console: watch sessions live, browse and label their images.

    It reads only from Tiled and serves nothing without Tiled's API key (sign in with it in
    the browser). Stop it with Ctrl-C.
    """
    from spm_bluesky.console import READY, ConsoleConfig, serve

    uri, key = _tiled(data_dir, tiled_uri, api_key_file)
    config = ConsoleConfig(uri, key, data_dir, host=host, port=port_number or 0)
    if not config.loopback_only:
        warn("console", f"listening on {host}, not {LOOPBACK}: other machines can reach "
                        "this console (and try keys); use it only on a network you trust")

    def ready(url: str) -> None:
        print(f"{READY} url={url} (reading {uri}; sign in with the Tiled API key)",
              flush=True)

    try:
        serve(config, ready)
    except OSError as err:
        raise fail(f"cannot listen on {host}:{config.port}: {err.strerror}") from None
    sys.stdout.flush()
    return 0


def add_commands(app: typer.Typer) -> None:
    """Add ``console`` to ``app``."""
    app.command("console")(console_command)
