"""Background services of a session: the STM IOC and the embedded Tiled server.

``spm-bluesky up`` starts both as detached processes bound to 127.0.0.1, each on a free port
(or one given), the IOC inside a private loopback Channel Access setup. It records what a
client needs (addresses, PIDs, the data directory, the Tiled API key and the ``EPICS_CA_*``
settings) in a state file, ``<data dir>/services.json`` (mode 0600: it holds the key).
``status`` checks that each process is alive and answers and ``down`` stops them; the
commands themselves are in :mod:`spm_bluesky.commandline.services`. With ``--backend
nanonis-sim`` the Nanonis simulator runs as a third process and the IOC speaks the Nanonis
protocol to it (:mod:`spm_bluesky.services.nanonis_sim`); with ``--backend nanonis`` the IOC
talks to a real controller. With ``--bus amqp://...`` (facility mode) the Tiled writer is a
third process, a consumer of the broker's queue (:mod:`spm_bluesky.storage.bus_consumer`);
the state file records the broker's URL without its password, which stays in
``$SPM_BUS_PASSWORD`` or, if it came in the URL, in ``<data dir>/bus.secret`` (mode 0600,
removed by ``down``). The web console (``spm-bluesky console``) runs beside Tiled, on
127.0.0.1, unless ``up --no-console``; it gets Tiled's key through its environment, never
its command line.

The data directory is ``--data-dir``, else ``$SPM_BLUESKY_HOME``, else ``./spm-data``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import psutil

from spm_bluesky.domain.limits import DEFAULT_PREFIX
from spm_bluesky.services.epics_env import free_port, loopback_ca_env
from spm_bluesky.services.nanonis_sim import SIM_LOG, SimLaunch, ioc_arguments, truth_state

if TYPE_CHECKING:  # the bus (pika, the journal's codec) is loaded only when used
    from spm_bluesky.services.bus_launch import ConsumerLaunch
    from spm_bluesky.storage.bus import BusAddress

#: Environment variable naming the data directory (state file, Tiled data, RE metadata).
HOME_ENV = "SPM_BLUESKY_HOME"
DEFAULT_DATA_DIR = "spm-data"
STATE_FILE = "services.json"
IOC_LOG = "ioc.log"
CONSOLE_LOG = "console.log"
#: The environment variable the console subprocess reads the Tiled key from.
CONSOLE_KEY_ENV = "SPM_TILED_API_KEY"
#: Tiled's own directory inside the data directory (catalog, arrays, api_key, its log).
TILED_DIR = "tiled"
LOOPBACK = "127.0.0.1"
#: The PV read to see whether the IOC answers.
PROBE_PV = "Status:Clock"
STATE_VERSION = 1
#: What ``up --backend`` can put behind the PVs.
BACKENDS = ("twin", "nanonis-sim", "nanonis")

_IOC_READY = re.compile(r"\bready\b.*\bport=(\d+)")
#: The console's ready line (``spm_bluesky.console.READY``) and its URL.
_CONSOLE_READY = re.compile(r"spm-console ready url=(\S+)")


class ServiceError(RuntimeError):
    """A service could not be started or reached; the message is meant for the user."""


class BusUnreachable(ServiceError):
    """The broker of ``--bus`` cannot be used; nothing was started."""


def data_dir_from(value: str | os.PathLike[str] | None = None,
                  environ: Mapping[str, str] = os.environ) -> Path:
    """The data directory: ``value``, else ``$SPM_BLUESKY_HOME``, else ``./spm-data``."""
    chosen = value or environ.get(HOME_ENV) or DEFAULT_DATA_DIR
    return Path(chosen).expanduser().resolve()


@dataclass(frozen=True)
class ProcessRecord:
    """One background process: its PID and start time (to tell it from a reused PID)."""

    pid: int
    create_time: float
    address: str
    log: str

    @classmethod
    def of(cls, pid: int, address: str, log: Path) -> ProcessRecord:
        """Record the running process ``pid``."""
        return cls(pid, psutil.Process(pid).create_time(), address, str(log))

    def process(self) -> psutil.Process | None:
        """The process if it is still the one recorded and not finished, else None."""
        try:
            proc = psutil.Process(self.pid)
            if abs(proc.create_time() - self.create_time) > 0.01:
                return None
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
        except psutil.Error:
            return None
        return proc

    def alive(self) -> bool:
        """True while the recorded process runs."""
        return self.process() is not None


@dataclass(frozen=True)
class ServiceState:
    """What ``up`` started and what a client needs to reach it (the state file's content)."""

    data_dir: str
    prefix: str
    seed: int
    sim: bool
    ca_port: int
    epics_env: dict[str, str]
    tiled_uri: str
    api_key: str
    ioc: ProcessRecord
    tiled: ProcessRecord
    started: float
    version: int = STATE_VERSION
    time_scale: float = 0.0
    #: What stands behind the PVs: "twin", "nanonis-sim" or "nanonis" (:data:`BACKENDS`).
    backend: str = "twin"
    #: The IOC's backend options (``--backend nanonis --nanonis HOST:PORT ...``).
    ioc_args: tuple[str, ...] = ()
    #: The Nanonis simulator (``--backend nanonis-sim``), and its two ports.
    nanonis_sim: ProcessRecord | None = None
    sim_ports: tuple[int, int] | None = None
    #: The folder of STM files Tiled serves (``up --serve-files``), absolute; None if none.
    files_dir: str | None = None
    #: Facility mode: the broker's URL without password, and the Tiled consumer process.
    bus_url: str | None = None
    bus_consumer: ProcessRecord | None = None
    bus_exchange: str | None = None
    #: The web console (its address is its URL); None with ``up --no-console``.
    console: ProcessRecord | None = None

    @property
    def path(self) -> Path:
        """The state file."""
        return Path(self.data_dir) / STATE_FILE

    def records(self) -> dict[str, ProcessRecord]:
        """The processes by service name."""
        records = {"ioc": self.ioc, "tiled": self.tiled}
        if self.nanonis_sim is not None:
            records["nanonis-sim"] = self.nanonis_sim
        if self.bus_consumer is not None:
            records["consumer"] = self.bus_consumer
        if self.console is not None:
            records["console"] = self.console
        return records

    def write(self) -> Path:
        """Write the state file atomically with mode 0600; return its path."""
        path = self.path
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(self), f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def read(cls, data_dir: Path) -> ServiceState | None:
        """The state in ``data_dir``, or None if nothing was started there."""
        path = Path(data_dir) / STATE_FILE
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            raise ServiceError(f"cannot read the state file {path}: {err}") from None
        if raw.get("version") != STATE_VERSION:
            raise ServiceError(f"{path} has state version {raw.get('version')!r}, not "
                               f"{STATE_VERSION}: stop its services by PID and delete it")
        raw["ioc"] = ProcessRecord(**raw["ioc"])
        raw["tiled"] = ProcessRecord(**raw["tiled"])
        for name in ("nanonis_sim", "bus_consumer", "console"):
            if raw.get(name):
                raw[name] = ProcessRecord(**raw[name])
        for name in ("ioc_args", "sim_ports"):
            if raw.get(name) is not None:
                raw[name] = tuple(raw[name])
        return cls(**raw)


@dataclass(frozen=True)
class UpOptions:
    """How ``up`` starts the services. Ports of None are picked free on 127.0.0.1."""

    data_dir: Path
    prefix: str = DEFAULT_PREFIX
    seed: int = 0
    time_scale: float = 0.0
    ioc_port: int | None = None
    tiled_port: int | None = None
    timeout: float = 60.0
    #: "twin" (the IOC's own twin), "nanonis-sim" (the Nanonis simulator behind a Nanonis
    #: IOC) or "nanonis" (a Nanonis controller at :attr:`nanonis`, ``HOST:PORT``).
    backend: str = "twin"
    nanonis: str | None = None
    #: A folder of STM files (``.sxm``, ``.dat``) Tiled serves beside the runs (``--serve-files``).
    serve_files: Path | None = None
    #: Facility mode: the broker's ``amqp://`` URL (``--bus``), password and all; None: off.
    bus: str | None = None
    #: The exchange documents go to (``--bus-exchange``); None: the default one.
    bus_exchange: str | None = None
    #: Start the web console too, on ``console_port`` (None: a free one).
    console: bool = True
    console_port: int | None = None


@contextlib.contextmanager
def environ_set(update: Mapping[str, str]) -> Iterator[None]:
    """Set variables in ``os.environ`` for the duration of the block (for caproto's client)."""
    saved = {key: os.environ.get(key) for key in update}
    os.environ.update(update)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def ioc_answers(prefix: str, epics_env: Mapping[str, str], timeout: float = 2.0) -> float | None:
    """Read ``<prefix>Status:Clock`` over CA with ``epics_env``; the value, or None."""
    from spm_bluesky.services.ca_client import read

    with environ_set(epics_env):
        try:
            response = read(prefix + PROBE_PV, timeout=timeout, repeater=False)
        except Exception:  # caproto raises timeouts and network errors of several kinds
            return None
    return float(response.data[0])


def check_port_free(port: int, what: str, option: str, udp: bool = False) -> None:
    """Raise ServiceError if TCP (and with ``udp`` also UDP) ``port`` on 127.0.0.1 is taken."""
    from spm_bluesky.storage.server import port_taken

    taken = port_taken(LOOPBACK, port, udp=udp)
    if taken:
        raise ServiceError(
            f"cannot start {what}: {taken}. Give another {option}, or leave it out for a free one.")


def _finished(proc: psutil.Process) -> bool:
    """True once ``proc`` has exited (a zombie counts: its parent may never reap it)."""
    with contextlib.suppress(psutil.Error):
        proc.wait(timeout=0)  # reaps it if it is our own child
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _signal_and_wait(procs: list[psutil.Process], sig: int, timeout: float) -> list[psutil.Process]:
    """Send ``sig`` to each process; return those still running after ``timeout`` seconds."""
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(sig)
    deadline = time.monotonic() + timeout
    while True:
        procs = [proc for proc in procs if not _finished(proc)]
        if not procs or time.monotonic() > deadline:
            return procs
        time.sleep(0.05)


def _stop(proc: psutil.Process, timeout: float = 10.0) -> None:
    """SIGTERM the process (and what it started), SIGKILL what is left after ``timeout``."""
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        procs = [proc]
    left = _signal_and_wait(procs, signal.SIGTERM, timeout)
    if left:
        _signal_and_wait(left, signal.SIGKILL, timeout)


@dataclass
class IocLaunch:
    """A twin IOC process just started (``python -m spm_bluesky.ioc``), and where its log
    output begins; used by ``up`` and by the session evaluation."""

    process: subprocess.Popen[bytes]
    log_path: Path
    offset: int

    @classmethod
    def start(cls, prefix: str, seed: int, ca_port: int, log_path: Path,
              epics_env: Mapping[str, str], time_scale: float = 0.0,
              backend_args: Sequence[str] = ()) -> IocLaunch:
        """Start the IOC detached (own session) on 127.0.0.1, appending to ``log_path``;
        ``backend_args`` put it behind a Nanonis (``--backend nanonis ...``)."""
        offset = log_path.stat().st_size if log_path.exists() else 0
        command = [sys.executable, "-m", "spm_bluesky.ioc", "--prefix", prefix,
                   "--seed", str(seed), "--host", LOOPBACK, "--port", str(ca_port),
                   "--time-scale", repr(float(time_scale)), *backend_args]
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=log_path.parent,
                env={**os.environ, **epics_env, "PYTHONUNBUFFERED": "1"},
                start_new_session=True,
            )
        return cls(process, log_path, offset)

    def wait_ready(self, prefix: str, epics_env: dict[str, str], timeout: float) -> None:
        """Wait for the ready line and a CA answer; ServiceError with the log tail if not."""
        from spm_bluesky.storage.server import read_tail

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = read_tail(self.log_path, 1_000_000, self.offset)
            if self.process.poll() is not None:
                raise ServiceError(
                    f"the IOC did not start: it exited with status {self.process.returncode}. "
                    f"End of its log ({self.log_path}):\n{text[-3000:]}")
            if _IOC_READY.search(text) and ioc_answers(prefix, epics_env) is not None:
                return
            time.sleep(0.2)
        raise ServiceError(
            f"the IOC did not answer over CA within {timeout:g} s. "
            f"End of its log ({self.log_path}):\n{read_tail(self.log_path, 3000, self.offset)}")

    def stop(self) -> None:
        """Stop the IOC (and reap it)."""
        if self.process.poll() is None:
            with contextlib.suppress(psutil.NoSuchProcess):
                _stop(psutil.Process(self.process.pid))


@dataclass
class ConsoleLaunch:
    """The web console process just started (``spm-bluesky console``) and where its log
    output begins. Tiled's key goes to it in its environment, never on its command line."""

    process: subprocess.Popen[bytes]
    log_path: Path
    offset: int

    @classmethod
    def start(cls, tiled_uri: str, api_key: str, port: int, data_dir: Path) -> ConsoleLaunch:
        """Start the console detached (own session) on 127.0.0.1:``port`` (0: a free one),
        appending to ``<data_dir>/console.log``."""
        log_path = data_dir / CONSOLE_LOG
        offset = log_path.stat().st_size if log_path.exists() else 0
        command = [sys.executable, "-m", "spm_bluesky", "console", "--data-dir", str(data_dir),
                   "--tiled-uri", tiled_uri, "--host", LOOPBACK,
                   *(["--port", str(port)] if port else [])]
        environment = {key: value for key, value in os.environ.items()
                       if key not in ("SPM_TILED_API_KEY", "TILED_API_KEY")}
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=data_dir, start_new_session=True,
                env={**environment, CONSOLE_KEY_ENV: api_key, "PYTHONUNBUFFERED": "1",
                     "MPLBACKEND": "Agg"})
        return cls(process, log_path, offset)

    def wait_ready(self, timeout: float) -> str:
        """The console's URL once it listens; ServiceError with its log tail if it does not."""
        from spm_bluesky.storage.server import read_tail

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = read_tail(self.log_path, 100_000, self.offset)
            if self.process.poll() is not None:
                raise ServiceError(
                    f"the console did not start: it exited with status "
                    f"{self.process.returncode}. End of its log ({self.log_path}):\n"
                    f"{text[-3000:]}")
            if found := _CONSOLE_READY.search(text):
                return found.group(1)
            time.sleep(0.1)
        raise ServiceError(f"the console printed no ready line within {timeout:g} s. End of "
                           f"its log ({self.log_path}):\n"
                           f"{read_tail(self.log_path, 3000, self.offset)}")

    def stop(self) -> None:
        """Stop the console (and reap it)."""
        if self.process.poll() is None:
            with contextlib.suppress(psutil.NoSuchProcess):
                _stop(psutil.Process(self.process.pid))


def _start_console(tiled_uri: str, api_key: str, port: int, data_dir: Path,
                   timeout: float) -> tuple[ConsoleLaunch, ProcessRecord]:
    """Start the console and wait until it listens; the launch and its record."""
    console = ConsoleLaunch.start(tiled_uri, api_key, port, data_dir)
    try:
        url = console.wait_ready(timeout)
    except BaseException:
        console.stop()
        raise
    return console, ProcessRecord.of(console.process.pid, url, console.log_path)


#: Tries at starting the IOC on ports chosen here, when one turns out to be taken.
PORT_ATTEMPTS = 3
ADDRESS_IN_USE = "Address already in use"


def _ca_ports(ioc_port: int | None) -> tuple[int, int, dict[str, str]]:
    """The IOC's CA port (``ioc_port``, or a free one), a free repeater port, and the
    loopback CA environment for both."""
    ca_port = ioc_port or free_port()
    repeater_port = free_port()
    while repeater_port == ca_port:
        repeater_port = free_port()
    return ca_port, repeater_port, loopback_ca_env(ca_port, repeater_port)


def up(options: UpOptions) -> tuple[ServiceState, bool]:
    """Start the IOC and Tiled in the background and write the state file.

    Returns the state and whether anything was started: when the services recorded in
    ``data_dir`` all still run, nothing is started; when some are down, only those are
    started again, on their recorded ports and with the same key (:func:`restart_down`).
    Raises ServiceError (with the log tail of the failing service) if a port is taken or a
    service does not come up; then nothing started here is left running.
    """
    data_dir = options.data_dir
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as err:
        raise ServiceError(f"cannot use {data_dir} as the data directory: "
                           f"{err.strerror}") from None
    previous = ServiceState.read(data_dir)
    if previous is not None:
        if all(rec.alive() for rec in previous.records().values()):
            return previous, False
        return restart_down(previous, options.timeout, bus=options.bus), True
    exchange = _exchange(options.bus_exchange)
    bus = _checked_bus(options.bus, exchange, fresh=True)  # before anything starts
    if options.ioc_port is not None:
        check_port_free(options.ioc_port, "the IOC", "--ioc-port", udp=True)
    if options.tiled_port is not None:
        check_port_free(options.tiled_port, "Tiled", "--tiled-port")
    if options.console and options.console_port is not None:
        check_port_free(options.console_port, "the console", "--console-port")
    ca_port, repeater_port, epics_env = _ca_ports(options.ioc_port)

    sim, sim_ports, backend_args = _start_backend(options, ca_port, repeater_port)
    ioc = IocLaunch.start(options.prefix, options.seed, ca_port, data_dir / IOC_LOG, epics_env,
                          options.time_scale, backend_args)  # starts while Tiled starts
    consumer: ConsumerLaunch | None = None
    console: ConsoleLaunch | None = None
    try:
        from spm_bluesky.storage.server import TiledConfig, TiledServerError, start_server

        config = TiledConfig(data_dir / TILED_DIR, host=LOOPBACK, port=options.tiled_port or 0,
                             startup_timeout=options.timeout, files_dir=options.serve_files)
        try:
            tiled = start_server(config, detach=True)
        except (TiledServerError, OSError, ValueError) as err:  # also a bad api_key file
            raise ServiceError(f"Tiled did not start: {err}") from None
        try:
            if sim is not None:
                try:
                    sim.wait_ready(options.timeout)
                except RuntimeError as err:
                    raise ServiceError(str(err)) from None
            for attempt in range(1, PORT_ATTEMPTS + 1):
                try:
                    ioc.wait_ready(options.prefix, epics_env, options.timeout)
                    break
                except ServiceError as err:
                    # A port chosen here can be taken before the IOC binds it (another
                    # process's CA client may draw it as its UDP port): choose again.
                    if (options.ioc_port is not None or attempt == PORT_ATTEMPTS
                            or ADDRESS_IN_USE not in str(err)):
                        raise
                ca_port, repeater_port, epics_env = _ca_ports(None)
                ioc = IocLaunch.start(options.prefix, options.seed, ca_port,
                                      data_dir / IOC_LOG, epics_env, options.time_scale,
                                      backend_args)
            consumer = None if bus is None else _start_consumer(
                data_dir, tiled.uri, tiled.api_key, bus, exchange, options.timeout)
            console_record = None
            if options.console:
                console, console_record = _start_console(
                    tiled.uri, tiled.api_key, options.console_port or 0, data_dir,
                    options.timeout)
            state = ServiceState(
                data_dir=str(data_dir), prefix=options.prefix, seed=options.seed,
                sim=options.backend != "nanonis",
                ca_port=ca_port, epics_env=epics_env, tiled_uri=tiled.uri,
                api_key=tiled.api_key,
                ioc=ProcessRecord.of(ioc.process.pid, f"{LOOPBACK}:{ca_port}", ioc.log_path),
                tiled=ProcessRecord.of(tiled.pid, tiled.uri, tiled.log_path),
                started=time.time(), time_scale=options.time_scale,
                backend=options.backend, ioc_args=backend_args,
                nanonis_sim=None if sim is None else ProcessRecord.of(
                    sim.process.pid, f"{LOOPBACK}:{sim.port}", sim.log_path),
                sim_ports=sim_ports,
                files_dir=None if config.files_dir is None else str(config.files_dir),
                bus_url=None if bus is None else bus.url,
                bus_exchange=None if bus is None else exchange,
                bus_consumer=None if consumer is None or bus is None else ProcessRecord.of(
                    consumer.process.pid, bus.url, consumer.log_path),
                console=console_record,
            )
            state.write()
            if bus is not None:
                from spm_bluesky.services.bus_launch import save_secret

                save_secret(data_dir, bus)
        except BaseException:
            if console is not None:
                console.stop()
            if consumer is not None:
                consumer.stop()
            tiled.stop()
            raise
    except BaseException:
        ioc.stop()
        if sim is not None:
            sim.stop()
        raise
    return state, True


def _exchange(name: str | None) -> str:
    from spm_bluesky.storage.bus import EXCHANGE

    return name or EXCHANGE


def _checked_bus(url: str | None, exchange: str, data_dir: Path | None = None, *,
                 fresh: bool = False) -> BusAddress | None:
    """The broker of ``--bus`` (None: no bus), once it answers and holds the exchange and
    its Tiled queue; BusUnreachable if not. ``fresh``: ServiceError if another consumer
    already takes that queue (another Tiled would get half the documents).

    With ``data_dir``, ``url`` is the recorded one and its password is looked up there."""
    from spm_bluesky.services.bus_launch import recorded_address
    from spm_bluesky.storage.bus import BusError, parse_bus_url, queue_state, tiled_queue

    if url is None:
        return None
    try:
        address = (parse_bus_url(url) if data_dir is None
                   else recorded_address(data_dir, url))
        _, consumers = queue_state(address, exchange)
    except BusError as err:
        raise BusUnreachable(str(err)) from None
    if fresh and consumers:
        raise ServiceError(f"the queue {tiled_queue(exchange)} at {address.url} already has a "
                           "consumer (another `spm-bluesky up --bus`?): give each Tiled its own "
                           "--bus-exchange")
    return address


def _start_consumer(data_dir: Path, tiled_uri: str, api_key: str, bus: BusAddress,
                    exchange: str, timeout: float) -> ConsumerLaunch:
    """Start the Tiled consumer and wait until it consumes; ServiceError if it does not."""
    from spm_bluesky.services.bus_launch import ConsumerLaunch
    from spm_bluesky.storage.bus import BusError

    consumer = ConsumerLaunch.start(data_dir, tiled_uri, api_key, bus, exchange)
    try:
        consumer.wait_ready(timeout)
    except BusError as err:
        consumer.stop()
        raise ServiceError(str(err)) from None
    return consumer


def _start_backend(options: UpOptions, *taken: int
                   ) -> tuple[SimLaunch | None, tuple[int, int] | None, tuple[str, ...]]:
    """Start the Nanonis simulator if the backend needs one (on two free ports, not
    ``taken``); return it, its ports and the IOC's backend options."""
    if options.backend == "twin":
        return None, None, ()
    if options.backend == "nanonis":
        if not options.nanonis:
            raise ServiceError("--backend nanonis needs --nanonis HOST:PORT")
        return None, None, ("--backend", "nanonis", "--nanonis", options.nanonis)
    if options.backend != "nanonis-sim":
        raise ServiceError(f"unknown backend {options.backend!r}: one of {', '.join(BACKENDS)}")
    ports: list[int] = []
    while len(ports) < 2:
        port = free_port()
        if port not in ports and port not in taken:
            ports.append(port)
    sim = SimLaunch.start(options.seed, ports[0], ports[1], options.data_dir / SIM_LOG,
                          options.time_scale)
    return sim, (ports[0], ports[1]), tuple(ioc_arguments(ports[0], ports[1]))


def restart_down(previous: ServiceState, timeout: float = 60.0, *, bus: str | None = None
                 ) -> ServiceState:
    """Start again each recorded service that is down, alone, as it was recorded.

    The IOC comes back on its CA port with the same prefix, seed and ``EPICS_CA_*``
    settings (a fresh twin); Tiled on its port with the same API key and data; the Tiled
    consumer on the recorded broker (with the password of ``bus``, the URL given to this
    ``up``, when it names the same broker); the console on its port. What still runs is
    left alone, so a running session sees a delay, not new addresses. Raises ServiceError
    if a recorded port is taken meanwhile; then nothing started here runs.
    """
    from spm_bluesky.storage.server import TiledConfig, TiledServerError, start_server

    data_dir = Path(previous.data_dir)
    ioc_record, tiled_record = previous.ioc, previous.tiled
    sim_record = previous.nanonis_sim
    started: list[Any] = []  # IocLaunch and TiledServer: both have stop()
    try:
        if sim_record is not None and previous.sim_ports and not sim_record.alive():
            sim = SimLaunch.start(previous.seed, *previous.sim_ports, data_dir / SIM_LOG,
                                  previous.time_scale)  # the IOC reconnects to it by itself
            started.append(sim)
            try:
                sim.wait_ready(timeout)
            except RuntimeError as err:
                raise ServiceError(str(err)) from None
            sim_record = ProcessRecord.of(sim.process.pid, sim_record.address, sim.log_path)
        if not previous.ioc.alive():
            if taken := _port_taken(previous.ca_port, udp=True):
                raise ServiceError(f"cannot restart the IOC on its port: {taken}; "
                                   "`spm-bluesky down` and `up` start on new ports")
            ioc = IocLaunch.start(previous.prefix, previous.seed, previous.ca_port,
                                  data_dir / IOC_LOG, previous.epics_env, previous.time_scale,
                                  previous.ioc_args)
            started.append(ioc)
            ioc.wait_ready(previous.prefix, previous.epics_env, timeout)
            ioc_record = ProcessRecord.of(ioc.process.pid, previous.ioc.address, ioc.log_path)
        if not previous.tiled.alive():
            port = urlparse(previous.tiled_uri).port or 0
            config = TiledConfig(data_dir / TILED_DIR, host=LOOPBACK, port=port,
                                 api_key=previous.api_key, startup_timeout=timeout,
                                 files_dir=None if previous.files_dir is None
                                 else Path(previous.files_dir))
            try:
                tiled = start_server(config, detach=True)
            except (TiledServerError, OSError, ValueError) as err:
                raise ServiceError(f"Tiled did not start again on port {port}: {err}"
                                   ) from None
            started.append(tiled)
            tiled_record = ProcessRecord.of(tiled.pid, tiled.uri, tiled.log_path)
        consumer_record = previous.bus_consumer
        if previous.bus_url is not None and not (consumer_record and consumer_record.alive()):
            from spm_bluesky.services.bus_launch import save_secret

            address = _restart_address(previous, bus)
            consumer = _start_consumer(data_dir, previous.tiled_uri, previous.api_key,
                                       address, _exchange(previous.bus_exchange), timeout)
            started.append(consumer)
            consumer_record = ProcessRecord.of(consumer.process.pid, previous.bus_url,
                                               consumer.log_path)
            save_secret(data_dir, address)
        console_record = previous.console
        if console_record is not None and not console_record.alive():
            port = urlparse(console_record.address).port or 0
            if taken := _port_taken(port):
                raise ServiceError(f"cannot restart the console on its port: {taken}; "
                                   "`spm-bluesky down` and `up` start on new ports")
            console, console_record = _start_console(previous.tiled_uri, previous.api_key,
                                                     port, data_dir, timeout)
            started.append(console)
    except BaseException:
        for service in started:
            service.stop()
        raise
    state = replace(previous, ioc=ioc_record, tiled=tiled_record, nanonis_sim=sim_record,
                    bus_consumer=consumer_record, console=console_record)
    state.write()
    return state


def _restart_address(previous: ServiceState, bus: str | None) -> BusAddress:
    """The recorded broker, answering, with the password of ``bus`` if that names it."""
    from spm_bluesky.storage.bus import BusError, parse_bus_url

    recorded = previous.bus_url
    assert recorded is not None
    exchange = _exchange(previous.bus_exchange)
    if bus is not None:
        try:
            given = parse_bus_url(bus)
        except BusError as err:
            raise BusUnreachable(str(err)) from None
        if given.url != recorded:
            raise ServiceError(f"the services in {previous.data_dir} use the broker {recorded}, "
                               f"not {given.url}: `spm-bluesky down` first to change it")
        if given.password is not None:
            return _checked_bus(bus, exchange) or given
    return _checked_bus(recorded, exchange, Path(previous.data_dir)) or parse_bus_url(recorded)


def _port_taken(port: int, udp: bool = False) -> str | None:
    from spm_bluesky.storage.server import port_taken

    return port_taken(LOOPBACK, port, udp=udp)


def down(data_dir: Path, timeout: float = 10.0) -> ServiceState | None:
    """Stop the services recorded in ``data_dir`` and remove the state file.

    Returns the state that was stopped, or None if nothing was recorded there. Data and logs
    stay in ``data_dir``.
    """
    state = ServiceState.read(data_dir)
    if state is None:
        return None
    for record in state.records().values():
        proc = record.process()
        if proc is not None:
            _stop(proc, timeout)
    state.path.unlink(missing_ok=True)
    if state.bus_url is not None:
        from spm_bluesky.services.bus_launch import remove_secret

        remove_secret(data_dir)
    return state


@dataclass(frozen=True)
class ServiceStatus:
    """How one recorded service is doing."""

    name: str
    record: ProcessRecord
    running: bool
    answering: bool
    detail: str

    def line(self) -> str:
        """One line for the ``status`` report."""
        state = "running" if self.running else "NOT RUNNING"
        answer = "answering" if self.answering else "NOT ANSWERING"
        return (f"  {self.name:<6} {state}, {answer}  pid {self.record.pid}  "
                f"{self.record.address}  {self.detail}\n"
                f"  {'':<6} log {self.record.log}")


def status(data_dir: Path) -> tuple[ServiceState | None, list[ServiceStatus]]:
    """Check each recorded service: is its process alive, does it answer?"""
    from spm_bluesky.storage.server import tiled_answers

    state = ServiceState.read(data_dir)
    if state is None:
        return None, []
    ioc_running = state.ioc.alive()
    clock = ioc_answers(state.prefix, state.epics_env) if ioc_running else None
    tiled_running = state.tiled.alive()
    services = [
        ServiceStatus("ioc", state.ioc, ioc_running, clock is not None,
                      f"CA, prefix {state.prefix}, backend {state.backend}"
                      + ("" if clock is None else f", instrument clock {clock:.3f} s")),
        ServiceStatus("tiled", state.tiled, tiled_running,
                      tiled_running and tiled_answers(state.tiled_uri, state.api_key),
                      "HTTP, API key in the state file"),
    ]
    if state.nanonis_sim is not None and state.sim_ports is not None:
        sim_running = state.nanonis_sim.alive()
        truth = truth_state(state.sim_ports[1]) if sim_running else None
        services.append(ServiceStatus(
            "nanonis-sim", state.nanonis_sim, sim_running, truth is not None,
            f"Nanonis TCP, truth channel port {state.sim_ports[1]}"))
    if state.bus_consumer is not None and state.bus_url is not None:
        services.append(_consumer_status(state, state.bus_consumer, state.bus_url))
    if state.console is not None:
        running = state.console.alive()
        services.append(ServiceStatus(
            "console", state.console, running,
            running and console_answers(state.console.address),
            "HTTP, web console (sign in with the Tiled API key)"))
    return state, services


def console_answers(url: str, timeout: float = 2.0) -> bool:
    """True if the console at ``url`` serves its sign-in form (which needs no key)."""
    import httpx

    try:
        return httpx.get(url.rstrip("/") + "/login", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def _consumer_status(state: ServiceState, record: ProcessRecord, url: str) -> ServiceStatus:
    """The Tiled consumer: alive, and does the broker see it consume its queue?"""
    from spm_bluesky.services.bus_launch import recorded_address
    from spm_bluesky.storage.bus import BusError, queue_state, tiled_queue

    running = record.alive()
    exchange = _exchange(state.bus_exchange)
    try:
        ready, consumers = queue_state(recorded_address(Path(state.data_dir), url), exchange)
    except BusError as err:
        return ServiceStatus("consumer", record, running, False, f"AMQP: {err}")
    return ServiceStatus("consumer", record, running, running and consumers > 0,
                         f"AMQP, queue {tiled_queue(exchange)}: {consumers} consumer(s), "
                         f"{ready} message(s) waiting")


def client_ca_env(epics_env: Mapping[str, str]) -> dict[str, str]:
    """The client side (``EPICS_CA_*``) of recorded CA settings.

    The server's ``EPICS_CAS_*`` stay with the IOC: libca clients given
    ``EPICS_CAS_BEACON_ADDR_LIST`` print a "Duplicate EPICS CA Address list entry" warning.
    """
    return {key: value for key, value in epics_env.items() if key.startswith("EPICS_CA_")}


def shell_environment(state: ServiceState, environ: Mapping[str, str] = os.environ
                      ) -> dict[str, str]:
    """The environment of a session using ``state``: CA settings and the data directory."""
    return {**environ, **client_ca_env(state.epics_env), HOME_ENV: state.data_dir}


def default_profile_dir() -> Path:
    """``profile_collection`` of the source checkout this package runs from."""
    return Path(__file__).resolve().parents[2] / "profile_collection"
