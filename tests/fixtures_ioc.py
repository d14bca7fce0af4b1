"""Pytest fixtures that run the real STM IOC (``python -m spm_bluesky.ioc``) as a subprocess.

Loaded by ``tests/conftest.py`` (``pytest_plugins``), after conftest has put a private
loopback Channel Access environment into ``os.environ``.

Fixtures
--------
``ioc`` (session scope) -> :class:`IocProcess`
    One IOC, seed 0, ``Sim:TimeScale`` 0, shared by the whole session. Read it freely;
    tests that change its state for good (faults, tip, area, damage) should start their own.
``start_ioc`` (function scope) -> ``start_ioc(seed=0, time_scale=0.0) -> IocProcess``
    Factory: starts a fresh IOC and stops it when the test ends. Several may run at once,
    up to :data:`MAX_IOCS` including the session ``ioc``.

Each IOC gets a random PV prefix; build names with ``ioc.pv("Scan:Acquire")``. Startup
waits for the IOC's ready line and fails with its stderr if none comes within
:data:`READY_TIMEOUT` seconds. ``ioc.log()`` returns what the IOC wrote to stderr.

Channel Access finds an IOC by a UDP search to its port, and several IOCs on one port
cannot all answer (the kernel hands each search to one socket). So each IOC gets its own
port from a pool fixed at import, and this module lists every pool port in
``EPICS_CA_ADDR_LIST`` before any client starts.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from spm_bluesky.services.epics_env import free_port, use_private_loopback_ca

#: Most IOCs that may run at once in one test session.
MAX_IOCS = 4
#: Seconds to wait for an IOC's ready line.
READY_TIMEOUT = 60.0
READY_PREFIX = "spm-ioc ready"
REPO_ROOT = Path(__file__).resolve().parent.parent

if "EPICS_CA_SERVER_PORT" not in os.environ:
    use_private_loopback_ca()
PORTS = (int(os.environ["EPICS_CA_SERVER_PORT"]), *(free_port() for _ in range(MAX_IOCS - 1)))
os.environ["EPICS_CA_ADDR_LIST"] = " ".join(f"127.0.0.1:{port}" for port in PORTS)


@dataclass
class IocProcess:
    """A running IOC subprocess: its PV prefix, process id, Popen object and CA port."""

    prefix: str
    pid: int
    process: subprocess.Popen
    port: int
    stderr_path: Path

    def pv(self, name: str) -> str:
        """The full PV name of ``name`` (e.g. ``"Scan:Acquire"``) on this IOC."""
        return f"{self.prefix}{name}"

    def log(self) -> str:
        """Everything the IOC has written to stderr so far."""
        return self.stderr_path.read_text(errors="replace")

    def stop(self) -> None:
        """Terminate the IOC (SIGTERM, then SIGKILL after 10 s) and wait for it."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class IocLauncher:
    """Starts IOCs on free pool ports, one log directory for all, and stops them."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.running: list[IocProcess] = []

    def start(self, seed: int = 0, time_scale: float = 0.0) -> IocProcess:
        """Start an IOC with a random prefix and wait for its ready line."""
        self.running = [ioc for ioc in self.running if ioc.process.poll() is None]
        used = {ioc.port for ioc in self.running}
        free = [port for port in PORTS if port not in used]
        if not free:
            raise RuntimeError(f"at most {MAX_IOCS} test IOCs can run at once "
                               f"(tests/fixtures_ioc.py MAX_IOCS)")
        return self._launch(f"T{uuid.uuid4().hex[:8]}:", free[0], seed, time_scale)

    def restart(self, ioc: IocProcess, seed: int = 0, time_scale: float = 0.0) -> IocProcess:
        """Start a fresh IOC with the prefix and port of ``ioc`` (stopped first if running).

        Clients that were connected to ``ioc`` reconnect to the new one by themselves.
        """
        ioc.stop()
        self.running = [other for other in self.running if other is not ioc]
        return self._launch(ioc.prefix, ioc.port, seed, time_scale)

    def _launch(self, prefix: str, port: int, seed: int, time_scale: float) -> IocProcess:
        """Start ``python -m spm_bluesky.ioc`` on ``prefix`` and ``port``; wait until ready."""
        stem = f"{prefix[:-1]}-{len(list(self.log_dir.glob(prefix[:-1] + '*.out')))}"
        out, err = self.log_dir / f"{stem}.out", self.log_dir / f"{stem}.err"
        command = [sys.executable, "-m", "spm_bluesky.ioc", "--prefix", prefix, "--seed", str(seed),
                   "--port", str(port), "--time-scale", repr(float(time_scale))]
        with out.open("wb") as stdout, err.open("wb") as stderr:
            process = subprocess.Popen(command, stdout=stdout, stderr=stderr, cwd=REPO_ROOT,
                                       env=dict(os.environ))
        ioc = IocProcess(prefix, process.pid, process, port, err)
        self.running.append(ioc)
        deadline = time.monotonic() + READY_TIMEOUT
        while READY_PREFIX not in out.read_text(errors="replace"):
            if process.poll() is not None or time.monotonic() > deadline:
                ioc.stop()
                why = (f"exited with code {process.returncode}" if process.returncode
                       else f"printed no ready line within {READY_TIMEOUT} s")
                raise RuntimeError(f"IOC {' '.join(command)} {why}; stderr:\n{ioc.log()}")
            time.sleep(0.05)
        return ioc

    def stop_all(self) -> None:
        """Stop every IOC this launcher started."""
        for ioc in self.running:
            ioc.stop()
        self.running.clear()


@pytest.fixture(scope="session")
def _ioc_launcher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IocLauncher]:
    launcher = IocLauncher(tmp_path_factory.mktemp("ioc-logs"))
    yield launcher
    launcher.stop_all()


@pytest.fixture(scope="session")
def ioc(_ioc_launcher: IocLauncher) -> IocProcess:
    """One IOC (seed 0, TimeScale 0) for the whole session; stopped at the end."""
    return _ioc_launcher.start()


@pytest.fixture
def start_ioc(_ioc_launcher: IocLauncher) -> Iterator[Callable[..., IocProcess]]:
    """Factory ``start_ioc(seed=0, time_scale=0.0) -> IocProcess``; stopped after the test."""
    started: list[IocProcess] = []

    def start(seed: int = 0, time_scale: float = 0.0) -> IocProcess:
        ioc = _ioc_launcher.start(seed, time_scale)
        started.append(ioc)
        return ioc

    yield start
    for ioc in started:
        ioc.stop()


@pytest.fixture
def restart_ioc(_ioc_launcher: IocLauncher) -> Iterator[Callable[..., IocProcess]]:
    """Factory ``restart_ioc(ioc, seed=0, time_scale=0.0) -> IocProcess``: kill ``ioc`` and
    start a fresh one on its prefix and port (a crash and restart of the IOC); stopped after
    the test."""
    started: list[IocProcess] = []

    def restart(ioc: IocProcess, seed: int = 0, time_scale: float = 0.0) -> IocProcess:
        new = _ioc_launcher.restart(ioc, seed, time_scale)
        started.append(new)
        return new

    yield restart
    for ioc in started:
        ioc.stop()
