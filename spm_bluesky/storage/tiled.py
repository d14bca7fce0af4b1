"""Tiled storage: an embedded server, the TiledWriter subscription, reading runs back, replay.

The embedded server is tiled's own ``tiled serve config`` in a subprocess, over a config file
that this module writes into the data directory (SQLite catalog, zarr arrays, SQLite tables,
``CatalogOfBlueskyRuns`` root spec, the ``BlueskyRun`` json-seq exporter, an API key, loopback
only). Facility mode is the same config with a PostgreSQL catalog URI. See the README, "Storage".
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import yaml
from bluesky_tiled_plugins import TiledWriter
from bluesky_tiled_plugins.clients.catalog_of_bluesky_runs import CatalogOfBlueskyRuns
from event_model import RunRouter, unpack_event_page
from tiled.client import from_uri
from tiled.client.container import Container
from tiled.queries import Eq

API_KEY_FILE = "api_key"
CONFIG_FILE = "tiled_config.yml"
LOG_FILE = "tiled_server.log"
CATALOG_FILE = "catalog.db"
TABLES_FILE = "tables.sqlite"
ARRAYS_DIR = "data"
JSON_SEQ_EXPORTER = "bluesky_tiled_plugins.exporters:json_seq_exporter"

logger = logging.getLogger(__name__)

#: Events per TiledWriter write. 1 puts every event in Tiled before the RunEngine moves on, so
#: a crash of the acquiring process loses at most the event in flight (the library default,
#: 10000, holds a whole run in memory until its stop document). Cost: the README, "Storage".
WRITER_BATCH_SIZE = 1
#: Largest internal array kept in a stream's SQL table. TiledWriter's default (16) sends
#: short 1-D arrays (an action mask, one Q-value per action) to SQL as list columns, which
#: Tiled's SQL storage refuses (HTTP 500, "Unsupported PyArrow type: list<item: int64>");
#: 0 writes every array as its own array node instead.
WRITER_MAX_ARRAY_SIZE = 0

Document = dict[str, Any]
DocumentCallback = Callable[[str, Document], Any]


class TiledServerError(RuntimeError):
    """The embedded Tiled server could not be started (the message includes its log)."""


@dataclass(frozen=True)
class TiledConfig:
    """Where and how the embedded Tiled server keeps and serves its data.

    ``port=0`` lets the server pick a free port at bind time (no race). ``api_key=None`` reads
    ``<data_dir>/api_key``, creating it (mode 0600) on first use. ``catalog_uri=None`` is a
    SQLite catalog in ``data_dir``; give ``postgresql://user@host:port/db`` for facility mode.
    ``tabular_uri`` is where the scalar columns of event streams go; by default a SQLite file in
    ``data_dir``, or the catalog database itself when that is PostgreSQL.
    """

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    api_key: str | None = None
    catalog_uri: str | None = None
    tabular_uri: str | None = None
    startup_timeout: float = 60.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir).expanduser().resolve())
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


def _log_config() -> dict[str, Any]:
    """Tiled's uvicorn logging config without ANSI colours (the log is a file we parse)."""
    from tiled.server.logging_config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    for formatter in config["formatters"].values():
        formatter["use_colors"] = False
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
            # Initialising costs a tiled subprocess (seconds): skip it for an existing SQLite file.
            "init_if_not_exists": not _existing_sqlite(config.resolved_catalog_uri),
            "specs": [{"name": "CatalogOfBlueskyRuns", "version": "3.0"}],
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


def _check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as err:
            raise TiledServerError(
                f"cannot start Tiled on {host}:{port}: the port is taken ({err.strerror}). "
                "Choose another port, or port=0 for a free one."
            ) from None


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
        return _read_tail(self.log_path, n_chars)

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


def _read_tail(path: Path, n_chars: int, offset: int = 0) -> str:
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
    if config.port:
        _check_port_free(config.host, config.port)
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
            server_log = _read_tail(log_path, 1_000_000, offset)
            if process.poll() is not None:
                raise TiledServerError(
                    _failure(f"it exited with status {process.returncode}", server_log, log_path)
                )
            match = _LISTENING.search(server_log)
            if match:
                scheme, _, port = match.groups()
                uri = f"{scheme}://{_connect_host(config.host)}:{port}"
                if _answers(uri, api_key):
                    return TiledServer(process, uri, api_key, config, config_path, log_path)
            time.sleep(0.1)
        raise TiledServerError(
            _failure(
                f"it did not answer within {config.startup_timeout} s",
                _read_tail(log_path, 1_000_000, offset),
                log_path,
            )
        )
    except BaseException:
        process.kill()
        process.wait()
        raise


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


def _answers(uri: str, api_key: str) -> bool:
    try:
        response = httpx.get(
            f"{uri}/api/v1/metadata/",
            headers={"Authorization": f"Apikey {api_key}"},
            timeout=2.0,
            trust_env=False,
        )
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def connect(uri: str, api_key: str) -> CatalogOfBlueskyRuns:
    """Connect to a Tiled server (or a node on it) that serves a catalog of Bluesky runs."""
    client = from_uri(uri, api_key=api_key, remember_me=False)
    if not isinstance(client, CatalogOfBlueskyRuns):
        raise TypeError(
            f"{uri} is a {type(client).__name__}, not a CatalogOfBlueskyRuns: point the URI at "
            "the node with that spec (see the README, 'Storage')"
        )
    return client


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class _RunWithBackup:
    """One run's writer; if a write to Tiled fails, the whole run goes to a JSON-lines file.

    Like TiledWriter's own ``backup_directory``, but numpy arrays in events survive: the
    library's backup writer (bluesky-tiled-plugins 2.0.12) cannot encode them and leaves a
    truncated line. The run's documents are kept in memory until its stop document.
    """

    def __init__(self, writer: DocumentCallback, path: Path) -> None:
        self._writer = writer
        self._path = path
        self._pending: list[tuple[str, Document]] = []
        self._failed = False

    def __call__(self, name: str, doc: Document) -> None:
        if not self._failed:
            self._pending.append((name, doc))
            try:
                self._writer(name, doc)
                return
            except Exception:
                logger.exception("Writing to Tiled failed; this run goes to %s", self._path)
                self._failed = True
        docs, self._pending = (self._pending or [(name, doc)]), []
        with open(self._path, "a") as f:
            for n, d in docs:
                f.write(json.dumps({"name": n, "doc": d}, default=_json_default) + "\n")


class BackedUpTiledWriter:
    """A TiledWriter per run that falls back to ``<backup_directory>/<run uid>.jsonl``.

    A failed write (Tiled down, a conflict) is logged and does not abort the plan; the run's
    documents, from its start, are in the file for ``load_backup``.
    """

    def __init__(self, client: Container, *, batch_size: int, backup_directory: Path) -> None:
        self._client = client.include_data_sources()  # what TiledWriter asks for: fetch once
        self._batch_size = batch_size
        self.backup_directory = Path(backup_directory)
        self.backup_directory.mkdir(parents=True, exist_ok=True)
        self._router = RunRouter([self._factory])

    def _factory(self, name: str, start: Document) -> tuple[list[DocumentCallback], list[Any]]:
        writer = TiledWriter(self._client, batch_size=self._batch_size,
                             max_array_size=WRITER_MAX_ARRAY_SIZE)
        path = self.backup_directory / f"{start['uid']}.jsonl"
        return [_RunWithBackup(writer, path)], []

    def __call__(self, name: str, doc: Document) -> None:
        self._router(name, doc)


def load_backup(path: Path | str) -> Iterator[tuple[str, Document]]:
    """The (name, doc) pairs of a run written by ``BackedUpTiledWriter``.

    Arrays come back as nested lists and events as ``event_page`` documents (what the run
    router hands on). To re-ingest, delete the partial run from Tiled and feed these to
    ``make_writer(client)``.
    """
    with open(path) as f:
        for line in f:
            item = json.loads(line)
            yield item["name"], item["doc"]


def make_writer(
    client: Container,
    *,
    batch_size: int = WRITER_BATCH_SIZE,
    backup_directory: Path | str | None = None,
) -> DocumentCallback:
    """A document callback that writes runs into Tiled.

    ``batch_size`` events are buffered before each write (see ``WRITER_BATCH_SIZE``). Without
    a ``backup_directory`` it is a plain TiledWriter, and a failed write raises (the RunEngine
    then aborts the plan); with one, see ``BackedUpTiledWriter``.
    """
    if backup_directory is None:
        return TiledWriter(client, batch_size=batch_size, max_array_size=WRITER_MAX_ARRAY_SIZE)
    return BackedUpTiledWriter(
        client, batch_size=batch_size, backup_directory=Path(backup_directory)
    )


def subscribe_writer(
    RE: Any,
    client: Container,
    *,
    batch_size: int = WRITER_BATCH_SIZE,
    backup_directory: Path | str | None = None,
) -> int:
    """Subscribe a Tiled writer (see ``make_writer``) to a RunEngine; return the token."""
    writer = make_writer(client, batch_size=batch_size, backup_directory=backup_directory)
    return RE.subscribe(writer)


def runs_by_session(client: CatalogOfBlueskyRuns, session_uid: str) -> CatalogOfBlueskyRuns:
    """The runs whose start document has this ``session_uid``, oldest first (lazy container)."""
    return client.search(Eq("start.session_uid", session_uid)).sort(("start.time", 1))


def dedupe_events(docs: Iterable[tuple[str, Document]]) -> Iterator[tuple[str, Document]]:
    """Drop repeated events: one per (descriptor, seq_num), the last one recorded.

    A suspender rewinds a plan to its last checkpoint and takes the points again with the same
    ``seq_num`` (and new uids), so the later event is the valid one. Event pages are unpacked.
    """
    items: list[tuple[str, Document]] = []
    for name, doc in docs:
        if name == "event_page":
            items.extend(("event", event) for event in unpack_event_page(doc))
        else:
            items.append((name, doc))
    last = {
        (doc["descriptor"], doc["seq_num"]): i
        for i, (name, doc) in enumerate(items)
        if name == "event"
    }
    for i, (name, doc) in enumerate(items):
        if name != "event" or last[(doc["descriptor"], doc["seq_num"])] == i:
            yield name, doc


@dataclass(frozen=True)
class ReplayResult:
    """What ``replay`` delivered, by document name, and what it had to fix on the way.

    ``duplicates_dropped``: repeated events removed; ``frames_repaired``: events whose array
    data were re-paired with the right frames (a stream with retaken points).
    """

    delivered: dict[str, int]
    duplicates_dropped: int
    frames_repaired: int


def _last_row_per_seq(seq_num: Iterable[int]) -> dict[int, int]:
    """seq_num -> index of its last row (a suspender's retake supersedes the first take)."""
    return {int(s): i for i, s in enumerate(seq_num)}


def _retaken_frames(run: Container, stream: str) -> dict[str, dict[int, Any]]:
    """field -> seq_num -> frame (as a list) for a stream whose table repeats a seq_num.

    Empty when nothing repeats. Needed because the json-seq exporter (bluesky-tiled-plugins
    2.0.12) keeps the last table row per seq_num but pairs array frames with events in storage
    order, so after a retake the frames land on the wrong events.
    """
    parts = run[stream].base
    if "internal" not in parts:
        return {}
    seq_num = parts["internal"].read(columns=["seq_num"])["seq_num"].to_numpy()
    last = _last_row_per_seq(seq_num)
    if len(last) == len(seq_num):
        return {}
    data_keys = parts.metadata.get("data_keys", {})
    frames: dict[str, dict[int, Any]] = {}
    for key in parts:
        if key == "internal" or data_keys.get(key, {}).get("external"):
            continue
        values = parts[key].read()
        if len(values) == len(seq_num):
            frames[key] = {s: values[i].tolist() for s, i in last.items()}
    return frames


def replay(run: Container, callback: DocumentCallback) -> ReplayResult:
    """Send a stored run's documents (``run.documents()``) to ``callback(name, doc)`` in order.

    Events come back once per (stream, seq_num), the last take when a suspender made the plan
    take a point again, with that take's array data. Event uids are not the original ones: the
    SQL layout does not keep them (the exporter makes ``event-<descriptor>-<seq_num>``).
    """
    docs = list(run.documents())
    stream_of = {doc["uid"]: doc["name"] for name, doc in docs if name == "descriptor"}
    retaken = {stream: _retaken_frames(run, stream) for stream in set(stream_of.values())}
    repaired = 0
    n_events = 0
    fixed: list[tuple[str, Document]] = []
    for name, doc in docs:
        if name == "event":
            n_events += 1
            frames = retaken[stream_of[doc["descriptor"]]]
            if frames:
                data = {**doc["data"], **{k: v[doc["seq_num"]] for k, v in frames.items()}}
                doc = {**doc, "data": data}
                repaired += 1
        fixed.append((name, doc))
    delivered: dict[str, int] = {}
    for name, doc in dedupe_events(fixed):
        callback(name, doc)
        delivered[name] = delivered.get(name, 0) + 1
    return ReplayResult(delivered, n_events - delivered.get("event", 0), repaired)


def read_stream_table(run: Container, stream: str) -> pd.DataFrame | None:
    """The scalar columns of ``stream``, one row per ``seq_num`` (the last take, as
    :func:`dedupe_events` keeps it), indexed and ordered by ``seq_num``; None when the run
    has no such table. Reads the table alone, never the array nodes."""
    if stream not in run:
        return None
    parts = run[stream].base
    if "internal" not in parts:
        return None
    table = parts["internal"].read()
    return table.drop_duplicates("seq_num", keep="last").set_index("seq_num").sort_index()


@dataclass(frozen=True)
class ImageStack:
    """A stream's 2-D images, one per event, de-duplicated and ordered by ``seq_num``."""

    images: np.ndarray
    seq_num: np.ndarray
    time: np.ndarray
    units: str | None
    data_key: dict[str, Any]


def read_image_stream(run: Container, field: str, stream: str = "primary") -> ImageStack:
    """Read the 2-D images of ``field`` in ``stream``, one per event, correctly.

    Reads the array node directly (a square image through the stream's xarray view gets the
    same dim name twice) and pairs its rows with the stream's table rows, which TiledWriter
    appends together. A repeated ``seq_num`` (a suspender's retake) keeps the last frame.
    """
    parts = run[stream].base
    images = np.asarray(parts[field].read())
    if images.ndim != 3:
        raise ValueError(f"{stream}/{field} has shape {images.shape}, not (events, rows, cols)")
    table = parts["internal"].read(columns=["seq_num", "time"])
    if len(table) != len(images):
        raise ValueError(
            f"{stream}/{field} has {len(images)} frames but the stream table has {len(table)} "
            "rows; cannot pair frames with events"
        )
    seq_num = table["seq_num"].to_numpy()
    last = _last_row_per_seq(seq_num)
    order = np.array([last[s] for s in sorted(last)], dtype=int)
    data_key = dict(parts.metadata.get("data_keys", {}).get(field, {}))
    return ImageStack(
        images=images[order],
        seq_num=seq_num[order],
        time=table["time"].to_numpy()[order],
        units=data_key.get("units"),
        data_key=data_key,
    )
