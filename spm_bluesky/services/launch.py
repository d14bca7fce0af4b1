"""Background services of a session: the STM IOC and the embedded Tiled server.

``spm-bluesky up`` starts both as detached processes bound to 127.0.0.1, each on a free port
(or one given), the IOC inside a private loopback Channel Access setup. It records what a
client needs (addresses, PIDs, the data directory, the Tiled API key and the ``EPICS_CA_*``
settings) in a state file, ``<data dir>/services.json`` (mode 0600: it holds the key).
``status`` checks that each process is alive and answers, ``down`` stops them and ``shell``
opens IPython with ``profile_collection`` and that environment.

The data directory is ``--data-dir``, else ``$SPM_BLUESKY_HOME``, else ``./spm-data``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from spm_bluesky.services.epics_env import free_port, loopback_ca_env

#: Environment variable naming the data directory (state file, Tiled data, RE metadata).
HOME_ENV = "SPM_BLUESKY_HOME"
DEFAULT_DATA_DIR = "spm-data"
STATE_FILE = "services.json"
IOC_LOG = "ioc.log"
#: Tiled's own directory inside the data directory (catalog, arrays, api_key, its log).
TILED_DIR = "tiled"
LOOPBACK = "127.0.0.1"
DEFAULT_PREFIX = "STM:"
#: The PV read to see whether the IOC answers.
PROBE_PV = "Status:Clock"
STATE_VERSION = 1

_IOC_READY = re.compile(r"\bready\b.*\bport=(\d+)")


class ServiceError(RuntimeError):
    """A service could not be started or reached; the message is meant for the user."""


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

    @property
    def path(self) -> Path:
        """The state file."""
        return Path(self.data_dir) / STATE_FILE

    def records(self) -> dict[str, ProcessRecord]:
        """The processes by service name."""
        return {"ioc": self.ioc, "tiled": self.tiled}

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
    from caproto.sync.client import read

    with environ_set(epics_env):
        try:
            response = read(prefix + PROBE_PV, timeout=timeout, repeater=False)
        except Exception:  # caproto raises timeouts and network errors of several kinds
            return None
    return float(response.data[0])


def tiled_answers(uri: str, api_key: str, timeout: float = 2.0) -> bool:
    """True if the Tiled server at ``uri`` answers an authenticated metadata request."""
    import httpx

    try:
        response = httpx.get(f"{uri}/api/v1/metadata/", timeout=timeout, trust_env=False,
                             headers={"Authorization": f"Apikey {api_key}"})
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def check_port_free(port: int, what: str, option: str, udp: bool = False) -> None:
    """Raise ServiceError if TCP (and with ``udp`` also UDP) ``port`` on 127.0.0.1 is taken."""
    kinds = [socket.SOCK_STREAM] + ([socket.SOCK_DGRAM] if udp else [])
    for kind in kinds:
        with socket.socket(socket.AF_INET, kind) as sock:
            if kind == socket.SOCK_STREAM:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((LOOPBACK, port))
            except OSError as err:
                proto = "TCP" if kind == socket.SOCK_STREAM else "UDP"
                raise ServiceError(
                    f"cannot start {what}: port {port} ({proto}) on {LOOPBACK} is taken "
                    f"({err.strerror}). Give another {option}, or leave it out for a free one."
                ) from None


def _log_tail(path: Path, offset: int = 0, n_chars: int = 3000) -> str:
    try:
        with open(path, errors="replace") as f:
            f.seek(offset)
            return f.read()[-n_chars:]
    except OSError:
        return ""


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
              epics_env: Mapping[str, str], time_scale: float = 0.0) -> IocLaunch:
        """Start the IOC detached (own session) on 127.0.0.1, appending to ``log_path``."""
        offset = log_path.stat().st_size if log_path.exists() else 0
        command = [sys.executable, "-m", "spm_bluesky.ioc", "--prefix", prefix,
                   "--seed", str(seed), "--host", LOOPBACK, "--port", str(ca_port),
                   "--time-scale", repr(float(time_scale))]
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
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = _log_tail(self.log_path, self.offset, 1_000_000)
            if self.process.poll() is not None:
                raise ServiceError(
                    f"the IOC did not start: it exited with status {self.process.returncode}. "
                    f"End of its log ({self.log_path}):\n{text[-3000:]}")
            if _IOC_READY.search(text) and ioc_answers(prefix, epics_env) is not None:
                return
            time.sleep(0.2)
        raise ServiceError(
            f"the IOC did not answer over CA within {timeout:g} s. "
            f"End of its log ({self.log_path}):\n{_log_tail(self.log_path, self.offset)}")

    def stop(self) -> None:
        """Stop the IOC (and reap it)."""
        if self.process.poll() is None:
            with contextlib.suppress(psutil.NoSuchProcess):
                _stop(psutil.Process(self.process.pid))


def up(options: UpOptions) -> tuple[ServiceState, bool]:
    """Start the IOC and Tiled in the background and write the state file.

    Returns the state and whether anything was started: when the services recorded in
    ``data_dir`` all still run, nothing is started. Raises ServiceError (with the log tail
    of the failing service) if a port is taken or a service does not come up; then nothing
    is left running.
    """
    data_dir = options.data_dir
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    previous = ServiceState.read(data_dir)
    if previous is not None:
        alive = [name for name, rec in previous.records().items() if rec.alive()]
        if len(alive) == len(previous.records()):
            return previous, False
        if alive:
            raise ServiceError(
                f"only {', '.join(alive)} of the services recorded in {previous.path} still "
                "runs: run `spm-bluesky down` first")
        previous.path.unlink()
    if options.ioc_port is not None:
        check_port_free(options.ioc_port, "the IOC", "--ioc-port", udp=True)
    if options.tiled_port is not None:
        check_port_free(options.tiled_port, "Tiled", "--tiled-port")
    ca_port = options.ioc_port or free_port()
    repeater_port = free_port()
    while repeater_port == ca_port:
        repeater_port = free_port()
    epics_env = loopback_ca_env(ca_port, repeater_port)

    ioc = IocLaunch.start(options.prefix, options.seed, ca_port, data_dir / IOC_LOG, epics_env,
                          options.time_scale)  # starts while Tiled starts
    try:
        from spm_bluesky.storage.tiled import TiledConfig, TiledServerError, start_server

        config = TiledConfig(data_dir / TILED_DIR, host=LOOPBACK, port=options.tiled_port or 0,
                             startup_timeout=options.timeout)
        try:
            tiled = start_server(config, detach=True)
        except (TiledServerError, OSError, ValueError) as err:  # also a bad api_key file
            raise ServiceError(f"Tiled did not start: {err}") from None
        try:
            ioc.wait_ready(options.prefix, epics_env, options.timeout)
            state = ServiceState(
                data_dir=str(data_dir), prefix=options.prefix, seed=options.seed, sim=True,
                ca_port=ca_port, epics_env=epics_env, tiled_uri=tiled.uri,
                api_key=tiled.api_key,
                ioc=ProcessRecord.of(ioc.process.pid, f"{LOOPBACK}:{ca_port}", ioc.log_path),
                tiled=ProcessRecord.of(tiled.pid, tiled.uri, tiled.log_path),
                started=time.time(),
            )
            state.write()
        except BaseException:
            tiled.stop()
            raise
    except BaseException:
        ioc.stop()
        raise
    return state, True


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
    state = ServiceState.read(data_dir)
    if state is None:
        return None, []
    ioc_running = state.ioc.alive()
    clock = ioc_answers(state.prefix, state.epics_env) if ioc_running else None
    tiled_running = state.tiled.alive()
    return state, [
        ServiceStatus("ioc", state.ioc, ioc_running, clock is not None,
                      f"CA, prefix {state.prefix}"
                      + ("" if clock is None else f", instrument clock {clock:.3f} s")),
        ServiceStatus("tiled", state.tiled, tiled_running,
                      tiled_running and tiled_answers(state.tiled_uri, state.api_key),
                      "HTTP, API key in the state file"),
    ]


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
    return Path(__file__).resolve().parents[1] / "profile_collection"


# -- command line -------------------------------------------------------------------------


def _not_up(data_dir: Path) -> str:
    return (f"no services are up in {data_dir} (no {STATE_FILE}): start them with "
            f"`spm-bluesky up --data-dir {data_dir}`")


def _print_state(state: ServiceState) -> None:
    env = " ".join(f"{key}={value}" for key, value in state.epics_env.items()
                   if key in ("EPICS_CA_ADDR_LIST", "EPICS_CA_SERVER_PORT"))
    print(f"  ioc    pid {state.ioc.pid}  CA {state.ioc.address}  prefix {state.prefix}  "
          f"log {state.ioc.log}")
    print(f"  tiled  pid {state.tiled.pid}  {state.tiled_uri}  log {state.tiled.log}")
    print(f"  CA clients need: {env} (all EPICS_CA_* settings are in the state file)")
    print(f"  state file: {state.path}")


def _cmd_up(args: argparse.Namespace) -> int:
    options = UpOptions(data_dir=data_dir_from(args.data_dir), prefix=args.prefix,
                        seed=args.seed, time_scale=args.time_scale, ioc_port=args.ioc_port,
                        tiled_port=args.tiled_port, timeout=args.timeout)
    try:
        state, started = up(options)
    except ServiceError as err:
        print(f"spm-bluesky up: {err}", file=sys.stderr)
        return 1
    print("started:" if started else f"already up in {state.data_dir} (nothing started):")
    _print_state(state)
    print(f"next: spm-bluesky shell --data-dir {state.data_dir}   (stop: spm-bluesky down "
          f"--data-dir {state.data_dir})")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    data_dir = data_dir_from(args.data_dir)
    try:
        state = down(data_dir)
    except ServiceError as err:
        print(f"spm-bluesky down: {err}", file=sys.stderr)
        return 1
    if state is None:
        print(f"nothing to stop: {_not_up(data_dir)}")
    else:
        print(f"stopped ioc (pid {state.ioc.pid}) and tiled (pid {state.tiled.pid}); data and "
              f"logs stay in {data_dir}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    data_dir = data_dir_from(args.data_dir)
    try:
        state, services = status(data_dir)
    except ServiceError as err:
        print(f"spm-bluesky status: {err}", file=sys.stderr)
        return 1
    if state is None:
        print(_not_up(data_dir))
        return 1
    print(f"services in {data_dir} (state file {state.path}):")
    for service in services:
        print(service.line())
    if all(s.running and s.answering for s in services):
        return 0
    print("some services are down or do not answer: see their logs; "
          f"`spm-bluesky down --data-dir {data_dir}` then `up` restarts them")
    return 1


def _cmd_shell(args: argparse.Namespace) -> int:
    data_dir = data_dir_from(args.data_dir)
    try:
        state = ServiceState.read(data_dir)
    except ServiceError as err:
        print(f"spm-bluesky shell: {err}", file=sys.stderr)
        return 1
    if state is None:
        print(f"spm-bluesky shell: {_not_up(data_dir)}", file=sys.stderr)
        return 1
    profile_dir = Path(args.profile_dir).resolve() if args.profile_dir else default_profile_dir()
    if not (profile_dir / "startup").is_dir():
        print(f"spm-bluesky shell: {profile_dir} has no startup/ directory; give the profile "
              "with --profile-dir", file=sys.stderr)
        return 1
    for name, record in state.records().items():
        if not record.alive():
            print(f"spm-bluesky shell: warning: {name} (pid {record.pid}) is not running; "
                  "see `spm-bluesky status`", file=sys.stderr)
    ipython_args = [a for a in args.ipython_args if a != "--"]
    argv = [sys.executable, "-m", "IPython", f"--profile-dir={profile_dir}", *ipython_args]
    sys.stdout.flush()
    os.execve(sys.executable, argv, shell_environment(state))
    return 0  # not reached


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``up``, ``down``, ``status`` and ``shell`` to the ``spm-bluesky`` parser."""
    data_help = f"data directory (default: ${HOME_ENV}, else ./{DEFAULT_DATA_DIR})"

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        parser = commands.add_parser(name, help=help_text, description=help_text)
        parser.add_argument("--data-dir", default=None, help=data_help)
        return parser

    up_parser = add("up", "start the IOC and Tiled in the background (loopback)")
    up_parser.add_argument("--prefix", default=DEFAULT_PREFIX,
                           help="PV prefix (default: %(default)s)")
    up_parser.add_argument("--seed", type=int, default=0, help="twin seed (default: %(default)s)")
    up_parser.add_argument("--time-scale", type=float, default=0.0,
                           help="twin time scale: 0 as fast as possible, 1 real time")
    up_parser.add_argument("--ioc-port", type=int, default=None,
                           help="CA server port of the IOC (default: a free one)")
    up_parser.add_argument("--tiled-port", type=int, default=None,
                           help="HTTP port of Tiled (default: a free one)")
    up_parser.add_argument("--timeout", type=float, default=60.0,
                           help="seconds each service may take to answer (default: %(default)s)")
    up_parser.set_defaults(handler=_cmd_up)
    add("down", "stop the services started by `up`").set_defaults(handler=_cmd_down)
    add("status", "show whether the services run and answer (exit status 1 if not)"
        ).set_defaults(handler=_cmd_status)
    shell = add("shell", "open IPython with profile_collection and the services' settings")
    shell.add_argument("--profile-dir", default=None,
                       help="IPython profile directory (default: the checkout's "
                            "profile_collection)")
    shell.add_argument("ipython_args", nargs=argparse.REMAINDER,
                       help="further arguments for IPython (after --)")
    shell.set_defaults(handler=_cmd_shell)

