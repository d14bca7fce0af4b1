"""Facility mode's service: the Tiled consumer process, and where the broker password lives.

``spm-bluesky up --bus URL`` checks the broker, then starts
``python -m spm_bluesky.storage.bus_consumer`` beside Tiled (:class:`ConsumerLaunch`). The
broker URL and the Tiled key reach it in its environment, never on its command line. The
password never goes into the state file or a log: it is taken from ``$SPM_BUS_PASSWORD``, else
from the URL given to ``up``, which keeps it in ``<data dir>/bus.secret`` (mode 0600) for
``spm-bluesky run`` and for restarting the consumer; ``down`` removes that file.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from spm_bluesky.services.processes import stop_process
from spm_bluesky.storage.bus import (
    PASSWORD_ENV,
    READY,
    URL_ENV,
    BusAddress,
    BusError,
    parse_bus_url,
)

#: The file keeping the broker password given in ``up --bus``'s URL (mode 0600).
BUS_SECRET = "bus.secret"
#: The consumer's log in the data directory.
CONSUMER_LOG = "bus-consumer.log"


def save_secret(data_dir: Path, address: BusAddress,
                environ: Mapping[str, str] = os.environ) -> None:
    """Keep the password of ``address`` for later commands, unless it is in the environment."""
    path = Path(data_dir) / BUS_SECRET
    if address.password is None or environ.get(PASSWORD_ENV):
        path.unlink(missing_ok=True)
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(address.password + "\n")


def remove_secret(data_dir: Path) -> None:
    """Forget the kept password (``down``)."""
    (Path(data_dir) / BUS_SECRET).unlink(missing_ok=True)


def recorded_address(data_dir: Path, url: str, environ: Mapping[str, str] = os.environ
                     ) -> BusAddress:
    """The broker recorded as ``url`` (no password) with its password: ``$SPM_BUS_PASSWORD``,
    else the kept one, else none (the broker's default login)."""
    address = parse_bus_url(url, environ)
    if address.password is not None:
        return address
    try:
        kept = (Path(data_dir) / BUS_SECRET).read_text().strip()
    except FileNotFoundError:
        return address
    return BusAddress(address.url, kept)


@dataclass
class ConsumerLaunch:
    """A Tiled consumer process just started, and where its log output begins."""

    process: subprocess.Popen[bytes]
    log_path: Path
    offset: int

    @classmethod
    def start(cls, data_dir: Path, tiled_uri: str, api_key: str, address: BusAddress,
              exchange: str) -> ConsumerLaunch:
        """Start the consumer detached (own session), appending to its log."""
        log_path = Path(data_dir) / CONSUMER_LOG
        offset = log_path.stat().st_size if log_path.exists() else 0
        command = [sys.executable, "-m", "spm_bluesky.storage.bus_consumer",
                   "--tiled-uri", tiled_uri, "--exchange", exchange]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", URL_ENV: address.full,
               "SPM_TILED_API_KEY": api_key}
        env.pop(PASSWORD_ENV, None)  # in the URL already
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=data_dir, env=env, start_new_session=True)
        return cls(process, log_path, offset)

    def _log(self) -> str:
        with open(self.log_path, "rb") as log:
            log.seek(self.offset)
            return log.read().decode(errors="replace")

    def wait_ready(self, timeout: float) -> None:
        """Wait for the ready line; BusError with the log tail if none comes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self._log()
            if self.process.poll() is not None:
                raise BusError(f"the Tiled consumer exited with status "
                               f"{self.process.returncode}. End of its log "
                               f"({self.log_path}):\n{text[-3000:]}")
            if READY in text:
                return
            time.sleep(0.1)
        raise BusError(f"the Tiled consumer did not consume within {timeout:g} s. End of its "
                       f"log ({self.log_path}):\n{self._log()[-3000:]}")

    def stop(self) -> None:
        """Stop the consumer (SIGTERM, then SIGKILL) and reap it."""
        stop_process(self.process)
