"""The embedded Tiled server: its config file, API key, subprocess and health check.

The server is tiled's own ``tiled serve config`` in a subprocess, over a config file that this
module writes into the data directory (SQLite catalog, zarr arrays, SQLite tables,
``CatalogOfBlueskyRuns`` root spec, the ``BlueskyRun`` json-seq exporter, an API key, loopback
only). Facility mode is the same config with a PostgreSQL catalog URI. See
docs/reference/storage.md.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import re
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
import yaml
from tiled.client import from_uri

from spm_bluesky.storage.catalog_template import place_empty_catalog

if TYPE_CHECKING:
    from bluesky_tiled_plugins.clients.catalog_of_bluesky_runs import CatalogOfBlueskyRuns

API_KEY_FILE = "api_key"
CONFIG_FILE = "tiled_config.yml"
LOG_FILE = "tiled_server.log"
CATALOG_FILE = "catalog.db"
TABLES_FILE = "tables.sqlite"
ARRAYS_DIR = "data"
JSON_SEQ_EXPORTER = "bluesky_tiled_plugins.exporters:json_seq_exporter"
#: Where a folder of STM files (``TiledConfig.files_dir``) is served: a node beside the runs.
FILES_NODE = "files"
#: How Tiled reads those files: the STM file adapters by MIME type, and the hook that gives
#: a file its MIME type from its first bytes (entry points, as in a Tiled config file).
FILE_ADAPTERS = {
    "application/x-nanonis-sxm": "spm_bluesky.formats.tiled_adapter:SXMAdapter",
    "application/x-createc-dat": "spm_bluesky.formats.tiled_adapter:CreatecAdapter",
}
FILE_MIMETYPE_HOOK = "spm_bluesky.formats.tiled_adapter:detect_mimetype"


class TiledServerError(RuntimeError):
    """The embedded Tiled server could not be started (the message includes its log)."""


@dataclass(frozen=True)
class TiledConfig:
    """Where and how the embedded Tiled server keeps and serves its data.

    ``port=0`` lets the server pick a free port at bind time (no race). ``api_key=None`` reads
    ``<data_dir>/api_key``, creating it (mode 0600) on first use. ``catalog_uri=None`` is a
    SQLite catalog in ``data_dir``; give ``postgresql://user@host:port/db`` for facility mode.
    ``tabular_uri`` is where the scalar columns of event streams go; by default a SQLite file in
    ``data_dir``, or the catalog database itself when that is PostgreSQL. ``files_dir``: a
    folder of Nanonis ``.sxm`` and Createc ``.dat`` files to serve as arrays (header as
    metadata) under the node :data:`FILES_NODE`, registered again at every start.
    """

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    api_key: str | None = None
    catalog_uri: str | None = None
    tabular_uri: str | None = None
    startup_timeout: float = 60.0
    files_dir: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir).expanduser().resolve())
        if self.files_dir is not None:
            files = Path(self.files_dir).expanduser().resolve()
            if not files.is_dir():
                raise ValueError(f"files_dir {files} is not a folder")
            object.__setattr__(self, "files_dir", files)
        if self.api_key is not None and not _API_KEY.fullmatch(self.api_key):
            raise ValueError("api_key must be letters and digits only (a tiled requirement)")

    @property
    def resolved_catalog_uri(self) -> str:
        """The catalog database URI that the server will use."""
        return self.catalog_uri or f"sqlite:///{self.data_dir / CATALOG_FILE}"

    @property
    def resolved_tabular_uri(self) -> str:
        """The tabular (SQL) storage URI that the server will use."""
        if self.tabular_uri:
            return self.tabular_uri
        if _is_postgresql(self.resolved_catalog_uri):
            # Tables are written through ADBC, which wants the plain 'postgresql' scheme.
            return re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql://", self.catalog_uri or "")
        return f"sqlite:///{self.data_dir / TABLES_FILE}"


_API_KEY = re.compile(r"[a-zA-Z0-9]+")


def _is_postgresql(uri: str) -> bool:
    return uri.startswith(("postgresql", "postgres:"))


def load_or_create_api_key(data_dir: Path) -> str:
    """The API key stored in ``data_dir``, created (random, mode 0600) if there is none."""
    path = Path(data_dir) / API_KEY_FILE
    if path.exists():
        key = path.read_text().strip()
        if not _API_KEY.fullmatch(key):
            raise ValueError(f"{path} does not hold an alphanumeric API key")
        return key
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key


def _existing_sqlite(uri: str) -> bool:
    return uri.startswith("sqlite") and Path(uri.split(":///", 1)[1]).is_file()


_API_KEY_IN_URL = re.compile(r"(api_key=)[^&\s\"']+", re.IGNORECASE)
REDACTED = "[redacted]"


def scrub_api_key(text: str) -> str:
    """``text`` with the value of every ``api_key=`` query parameter replaced."""
    return _API_KEY_IN_URL.sub(r"\g<1>" + REDACTED, text)


class ScrubApiKeyFilter(logging.Filter):
    """Removes API keys given as ``?api_key=`` from the server's log lines (the request line
    of uvicorn's access log holds the whole URL). Installed by :func:`_log_config`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = scrub_api_key(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(scrub_api_key(arg) if isinstance(arg, str) else arg
                                for arg in record.args)
        elif isinstance(record.args, dict):
            record.args = {key: scrub_api_key(value) if isinstance(value, str) else value
                           for key, value in record.args.items()}
        return True


def _log_config() -> dict[str, Any]:
    """Tiled's uvicorn logging config without ANSI colours (the log is a file we parse) and
    with API keys scrubbed from logged URLs (:class:`ScrubApiKeyFilter`)."""
    from tiled.server.logging_config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    for formatter in config["formatters"].values():
        formatter["use_colors"] = False
    config["filters"]["scrub_api_key"] = {"()": f"{__name__}.ScrubApiKeyFilter"}
    for handler in config["handlers"].values():
        handler["filters"] = ["scrub_api_key", *handler.get("filters", [])]
    return config


def tiled_service_config(config: TiledConfig, api_key: str) -> dict[str, Any]:
    """The tiled service configuration (as for ``tiled serve config``) for ``config``."""
    return {
        "authentication": {"single_user_api_key": api_key, "allow_anonymous_access": False},
        "catalog": {
            "uri": config.resolved_catalog_uri,
            "writable_storage": [
                str(config.data_dir / ARRAYS_DIR),
                config.resolved_tabular_uri,
            ],
            # Initialising costs a tiled subprocess (seconds): skip it for an existing SQLite
            # file (start_server copies an empty one into a new data directory).
            "init_if_not_exists": not _existing_sqlite(config.resolved_catalog_uri),
            "specs": [{"name": "CatalogOfBlueskyRuns", "version": "3.0"}],
            **({"readable_storage": [str(config.files_dir)], "adapters_by_mimetype": FILE_ADAPTERS}
               if config.files_dir is not None else {}),
        },
        "media_types": {"BlueskyRun": {"application/json-seq": JSON_SEQ_EXPORTER}},
        "uvicorn": {"host": config.host, "port": config.port, "log_config": _log_config()},
    }


def write_tiled_config(config: TiledConfig, api_key: str) -> Path:
    """Write the service config into ``data_dir`` (mode 0600: it holds the key); return it."""
    path = config.data_dir / CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(tiled_service_config(config, api_key), f, sort_keys=False)
    return path


def _connect_host(host: str) -> str:
    """An address a local client can use for a server bound to ``host``."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def port_taken(host: str, port: int, *, udp: bool = False) -> str | None:
    """Why TCP (and with ``udp`` also UDP) ``port`` on ``host`` cannot be bound; None if free.

    The one port check of the services: a port given on a command line is refused before
    anything starts, with this reason.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for kind in [socket.SOCK_STREAM] + ([socket.SOCK_DGRAM] if udp else []):
        with socket.socket(family, kind) as sock:
            if kind == socket.SOCK_STREAM:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as err:
                proto = "TCP" if kind == socket.SOCK_STREAM else "UDP"
                return f"port {port} ({proto}) on {host} is taken ({err.strerror})"
    return None


@dataclass
class TiledServer:
    """A running embedded Tiled server (a subprocess); a context manager that stops it."""

    process: subprocess.Popen[bytes]
    uri: str
    api_key: str
    config: TiledConfig
    config_path: Path
    log_path: Path

    @property
    def pid(self) -> int:
        """Process id of the server (for a state file)."""
        return self.process.pid

    def running(self) -> bool:
        """True while the server process is alive."""
        return self.process.poll() is None

    def client(self) -> CatalogOfBlueskyRuns:
        """A new authenticated client for this server."""
        return connect(self.uri, self.api_key)

    def log_tail(self, n_chars: int = 4000) -> str:
        """The end of the server's log file."""
        return read_tail(self.log_path, n_chars)

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after ``timeout`` seconds)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)

    def __enter__(self) -> TiledServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def read_tail(path: Path, n_chars: int = 4000, offset: int = 0) -> str:
    """The last ``n_chars`` of a log file from byte ``offset`` on ('' if it cannot be read)."""
    try:
        with open(path, errors="replace") as f:
            f.seek(offset)
            return f.read()[-n_chars:]
    except OSError:
        return ""


def server_environment() -> dict[str, str]:
    """This process's environment without ``TILED_*`` variables, for the server.

    tiled 0.2.20 lets environment variables override its config file (``TILED_CATALOG_URI``
    would swap the catalog, ``TILED_UVICORN`` the bind address), so the file written here is
    kept the single source of truth. Plain tracebacks keep the log short.
    """
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("TILED_")}
    return {**env, "_TYPER_STANDARD_TRACEBACK": "1", "NO_COLOR": "1"}


_LISTENING = re.compile(r"Uvicorn running on (https?)://(\S+):(\d+)")


def start_server(config: TiledConfig, *, detach: bool = False) -> TiledServer:
    """Start tiled on ``config`` in a subprocess and wait until it answers an authenticated request.

    ``detach=True`` puts the server in its own session so it outlives a terminal's Ctrl-C
    (for ``spm-bluesky up``); stop it with ``TiledServer.stop`` or SIGTERM to its pid.
    Raises ``TiledServerError`` with the server log if the port is taken, the server exits,
    or it does not come up within ``config.startup_timeout`` seconds.
    """
    # A new data directory is private (0700): its files can be read without the API key.
    config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    (config.data_dir / ARRAYS_DIR).mkdir(exist_ok=True)
    api_key = config.api_key or load_or_create_api_key(config.data_dir)
    if config.port and (taken := port_taken(config.host, config.port)):
        raise TiledServerError(
            f"cannot start Tiled: {taken}. Choose another port, or port=0 for a free one.")
    catalog = config.data_dir / CATALOG_FILE
    if config.catalog_uri is None and not catalog.exists():
        place_empty_catalog(catalog)
    config_path = write_tiled_config(config, api_key)
    log_path = config.data_dir / LOG_FILE
    offset = log_path.stat().st_size if log_path.exists() else 0
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "tiled", "serve", "config", str(config_path)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=config.data_dir,
            env=server_environment(),
            start_new_session=detach,
        )
    deadline = time.monotonic() + config.startup_timeout
    try:
        while time.monotonic() < deadline:
            server_log = read_tail(log_path, 1_000_000, offset)
            if process.poll() is not None:
                raise TiledServerError(
                    _failure(f"it exited with status {process.returncode}", server_log, log_path)
                )
            match = _LISTENING.search(server_log)
            if match:
                scheme, _, port = match.groups()
                uri = f"{scheme}://{_connect_host(config.host)}:{port}"
                if tiled_answers(uri, api_key):
                    if config.files_dir is not None:
                        register_files(from_uri(uri, api_key=api_key, remember_me=False),
                                       config.files_dir)
                    return TiledServer(process, uri, api_key, config, config_path, log_path)
            time.sleep(0.1)
        raise TiledServerError(
            _failure(
                f"it did not answer within {config.startup_timeout} s",
                read_tail(log_path, 1_000_000, offset),
                log_path,
            )
        )
    except BaseException:
        process.kill()
        process.wait()
        raise


def register_files(client: Any, files_dir: Path) -> None:
    """Serve ``files_dir`` under :data:`FILES_NODE`: Tiled's own ``register`` with the STM file
    adapters (what was registered before is replaced; a file that cannot be read is left out,
    and the reason is logged)."""
    from tiled.client.container import Container
    from tiled.client.register import register

    # A plain container: the runs catalog's client reads every key as a (partial) run uid.
    root = Container(client.context, item=client.item, structure_clients=client.structure_clients)
    asyncio.run(register(root, files_dir, prefix=f"/{FILES_NODE}",
                         adapters_by_mimetype=dict(FILE_ADAPTERS),
                         mimetype_detection_hook=FILE_MIMETYPE_HOOK))


_EXCEPTION_LINE = re.compile(r"^\s*[\w.]*(Error|Exception)\b.*")


def _failure(reason: str, server_log: str, log_path: Path) -> str:
    """An error message: why, the last exception line in the log (the cause), the log's tail."""
    if "address already in use" in server_log:
        reason = "its port is taken"
    lines = [line for line in server_log.splitlines() if line.strip()]
    causes = [line.strip() for line in lines if _EXCEPTION_LINE.match(line)]
    cause = causes[-1] if causes else (lines[-1].strip() if lines else "(empty log)")
    return (
        f"Tiled server did not start: {reason}: {cause}\n"
        f"Server log ({log_path}), last lines:\n" + "\n".join(lines[-40:])
    )


def unreachable(uri: str, timeout: float = 3.0) -> str | None:
    """Why nothing can answer at ``uri`` (connection refused, no such host, no answer within
    ``timeout`` seconds); None when its host accepts a TCP connection on its port.

    Tiled's client retries a refused connection for up to 45 s with a spinner: a command given
    a wrong address checks it with this first and says so at once.
    """
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{uri!r} is not an http(s) URI"
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as err:
        return f"{uri!r}: {err}"
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError as err:
        why = err.strerror or type(err).__name__
        return f"nothing answers at {parts.hostname}:{port} ({why})"
    return None


def tiled_answers(uri: str, api_key: str, timeout: float = 2.0) -> bool:
    """True if the Tiled server at ``uri`` answers an authenticated metadata request."""
    try:
        response = httpx.get(
            f"{uri}/api/v1/metadata/",
            headers={"Authorization": f"Apikey {api_key}"},
            timeout=timeout,
            trust_env=False,
        )
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def connect_files(uri: str, api_key: str) -> Any:
    """The node serving ``TiledConfig.files_dir`` on the server at ``uri`` (a plain Tiled
    container: one array node per file, named by the file's name up to its first dot)."""
    return from_uri(f"{uri}/api/v1/metadata/{FILES_NODE}", api_key=api_key, remember_me=False)


def connect(uri: str, api_key: str) -> CatalogOfBlueskyRuns:
    """Connect to a Tiled server (or a node on it) that serves a catalog of Bluesky runs."""
    from bluesky_tiled_plugins.clients.catalog_of_bluesky_runs import CatalogOfBlueskyRuns

    client = from_uri(uri, api_key=api_key, remember_me=False)
    if not isinstance(client, CatalogOfBlueskyRuns):
        raise TypeError(
            f"{uri} is a {type(client).__name__}, not a CatalogOfBlueskyRuns: point the URI at "
            "the node with that spec (see docs/reference/storage.md)"
        )
    return client


