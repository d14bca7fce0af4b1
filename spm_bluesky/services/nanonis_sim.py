"""The Nanonis simulator as a background service (``spm-bluesky up --backend nanonis-sim``).

``up`` starts ``python -m spm_bluesky.nanonis`` detached, on two fixed loopback ports (the
protocol and the truth channel), so that the simulator can be started again where the IOC
looks for it. The IOC then runs with ``--backend nanonis`` pointed at both ports.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spm_bluesky.services.processes import stop_process

LOOPBACK = "127.0.0.1"
#: The simulator's log in the data directory.
SIM_LOG = "nanonis-sim.log"

_READY = re.compile(r"spm-nanonis-sim ready host=\S+ port=(\d+) truth_port=(\d+)")


def ioc_arguments(port: int, truth_port: int | None) -> list[str]:
    """The ``spm-ioc`` options that put it behind a Nanonis on ``port`` (with the
    simulator's truth channel on ``truth_port``), both on loopback."""
    args = ["--backend", "nanonis", "--nanonis", f"{LOOPBACK}:{port}"]
    if truth_port is not None:
        args += ["--truth", f"{LOOPBACK}:{truth_port}"]
    return args


def truth_state(port: int, timeout: float = 2.0) -> dict[str, Any] | None:
    """The simulator's truth-channel state on ``127.0.0.1:port``, or None if it does not
    answer."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout) as sock:
            sock.sendall(b'{"op": "state"}\n')
            line = sock.makefile("rb").readline()
        answer: dict[str, Any] = json.loads(line)
    except (OSError, ValueError):
        return None
    return answer if answer.get("ok") else None


@dataclass
class SimLaunch:
    """A simulator process just started, and where its log output begins."""

    process: subprocess.Popen[bytes]
    log_path: Path
    offset: int
    port: int
    truth_port: int

    @classmethod
    def start(cls, seed: int, port: int, truth_port: int, log_path: Path,
              time_scale: float = 0.0) -> SimLaunch:
        """Start the simulator detached (own session) on 127.0.0.1, appending to ``log_path``."""
        offset = log_path.stat().st_size if log_path.exists() else 0
        command = [sys.executable, "-m", "spm_bluesky.nanonis", "--host", LOOPBACK,
                   "--port", str(port), "--truth-port", str(truth_port), "--seed", str(seed),
                   "--time-scale", repr(float(time_scale)), "--log-level", "INFO"]
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=log_path.parent, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                start_new_session=True)
        return cls(process, log_path, offset, port, truth_port)

    def wait_ready(self, timeout: float) -> None:
        """Wait for the ready line; RuntimeError with the log tail if none comes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(self.log_path, "rb") as log:
                log.seek(self.offset)
                text = log.read().decode(errors="replace")
            if self.process.poll() is not None:
                raise RuntimeError(f"the Nanonis simulator exited with status "
                                   f"{self.process.returncode}:\n{text[-3000:]}")
            if _READY.search(text):
                return
            time.sleep(0.1)
        raise RuntimeError(f"the Nanonis simulator printed no ready line within {timeout:g} s")

    def stop(self) -> None:
        """Stop the simulator (SIGTERM, then SIGKILL) and reap it."""
        stop_process(self.process)
