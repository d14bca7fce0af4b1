"""``spm-bluesky up``, ``down``, ``status`` and ``shell``: the background services.

The service logic (starting, stopping, checking) is :mod:`spm_bluesky.services.launch`;
this module turns options into calls and results into lines.
"""

import os
import sys
from pathlib import Path
from urllib.parse import urlparse

import typer

from spm_bluesky.commandline._common import (
    DataDir,
    choice,
    fail,
    non_negative_float,
    non_negative_int,
    port,
    positive_float,
    usage_error,
    warn,
)
from spm_bluesky.services.launch import (
    BACKENDS,
    DEFAULT_PREFIX,
    HOME_ENV,
    STATE_FILE,
    BusUnreachable,
    ServiceError,
    ServiceState,
    UpOptions,
    default_profile_dir,
    down,
    shell_environment,
    status,
    up,
)


def not_up(data_dir: Path) -> str:
    """What to say when no services are recorded in ``data_dir``."""
    return (f"no services are up in {data_dir} (no {STATE_FILE}): start them with "
            f"`spm-bluesky up --data-dir {data_dir}`")


def _print_state(state: ServiceState) -> None:
    env = " ".join(f"{key}={value}" for key, value in state.epics_env.items()
                   if key in ("EPICS_CA_ADDR_LIST", "EPICS_CA_SERVER_PORT"))
    print(f"  ioc    pid {state.ioc.pid}  CA {state.ioc.address}  prefix {state.prefix}  "
          f"log {state.ioc.log}")
    print(f"  tiled  pid {state.tiled.pid}  {state.tiled_uri}  log {state.tiled.log}")
    if state.files_dir is not None:
        from spm_bluesky.storage.server import FILES_NODE

        print(f"  files  {state.files_dir} served by Tiled under /{FILES_NODE}")
    if state.nanonis_sim is not None:
        print(f"  nanonis-sim  pid {state.nanonis_sim.pid}  {state.nanonis_sim.address}  "
              f"log {state.nanonis_sim.log}")
    if state.bus_consumer is not None:
        print(f"  consumer  pid {state.bus_consumer.pid}  Tiled writer on {state.bus_url} "
              f"exchange {state.bus_exchange}  log {state.bus_consumer.log}")
    if state.console is not None:
        print(f"  console  pid {state.console.pid}  {state.console.address}  (sign in with "
              f"the Tiled API key)  log {state.console.log}")
    print(f"  CA clients need: {env} (all EPICS_CA_* settings are in the state file)")
    print(f"  state file: {state.path}")


def _ignored(ctx: typer.Context, options: UpOptions, state: ServiceState) -> list[str]:
    """The options given on the command line that the running services do not have."""
    running = {"prefix": state.prefix, "seed": state.seed, "time_scale": state.time_scale,
               "ioc_port": state.ca_port, "tiled_port": urlparse(state.tiled_uri).port,
               "backend": state.backend, "serve_files": state.files_dir, "bus": state.bus_url,
               "bus_exchange": state.bus_exchange, "console": state.console is not None,
               "console_port": state.console and urlparse(state.console.address).port}
    given = {"prefix": options.prefix, "seed": options.seed, "time_scale": options.time_scale,
             "ioc_port": options.ioc_port, "tiled_port": options.tiled_port,
             "backend": options.backend,
             "serve_files": options.serve_files and str(options.serve_files.resolve()),
             "bus": options.bus and _scrubbed(options.bus),
             "bus_exchange": options.bus_exchange, "console": options.console,
             "console_port": options.console_port}
    return [_option_text(name, value) for name, value in given.items()
            if _given(ctx, name) and value != running[name]]


def _option_text(name: str, value: object) -> str:
    """How an option was given: ``--name value``, or ``--console``/``--no-console``."""
    option = name.replace("_", "-")
    if isinstance(value, bool):
        return f"--{option}" if value else f"--no-{option}"
    return f"--{option} {value}"


def _scrubbed(url: str) -> str:
    from spm_bluesky.storage.bus import scrub

    return scrub(url)


def _given(ctx: typer.Context, name: str) -> bool:
    """True if the option ``name`` was given on the command line."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name == "COMMANDLINE"


def up_command(
    ctx: typer.Context,
    data_dir: Path = DataDir,
    prefix: str = typer.Option(DEFAULT_PREFIX, help="PV prefix"),
    seed: int = typer.Option(0, parser=non_negative_int, help="twin seed"),
    time_scale: float = typer.Option(
        0.0, parser=non_negative_float,
        help="twin time scale: 0 as fast as possible, 1 real time"),
    ioc_port: int | None = typer.Option(
        None, parser=port, help="CA server port of the IOC (default: a free one)",
        show_default=False),
    tiled_port: int | None = typer.Option(
        None, parser=port, help="HTTP port of Tiled (default: a free one)",
        show_default=False),
    timeout: float = typer.Option(60.0, parser=positive_float,
                                  help="seconds each service may take to answer"),
    backend: str = typer.Option(
        "twin", parser=choice(*BACKENDS), metavar="|".join(BACKENDS),
        help="behind the PVs: the IOC's twin, the Nanonis simulator (started too), or a "
             "Nanonis controller at --nanonis"),
    nanonis: str | None = typer.Option(
        None, metavar="HOST:PORT", help="the Nanonis TCP programming interface "
                                        "(--backend nanonis)", show_default=False),
    serve_files: Path | None = typer.Option(
        None, "--serve-files", metavar="DIR", show_default=False,
        help="also serve the STM files (.sxm, .dat) in DIR through Tiled, beside the runs"),
    bus: str | None = typer.Option(
        None, "--bus", metavar="amqp://[USER[:PASSWORD]@]HOST[:PORT][/VHOST]",
        show_default=False,
        help="facility mode: sessions publish their documents to this RabbitMQ broker and a "
             "consumer process writes them into Tiled (password: $SPM_BUS_PASSWORD or the URL)"),
    bus_exchange: str | None = typer.Option(
        None, "--bus-exchange", metavar="NAME", show_default=False,
        help="the broker exchange of this Tiled (default: spm-bluesky.documents); its queue "
             "is NAME.tiled"),
    console: bool = typer.Option(
        True, "--console/--no-console",
        help="also start the web console (127.0.0.1, behind the Tiled API key)"),
    console_port: int | None = typer.Option(
        None, parser=port, help="HTTP port of the console (default: a free one)",
        show_default=False),
) -> int:
    """Start the IOC and Tiled in the background (loopback).

    With --backend nanonis-sim the Nanonis simulator runs too, with the IOC behind it.
    With --bus the Tiled consumer of the broker runs too (facility mode). The web console
    runs too unless --no-console.
    When they already run in the data directory nothing is started; options that differ
    from what runs are named and the exit status is 1.
    """
    if not prefix.strip():
        raise typer.BadParameter("the PV prefix is empty", param_hint="--prefix")
    if (backend == "nanonis") != (nanonis is not None):
        raise usage_error("--nanonis", "HOST:PORT goes with --backend nanonis, and only "
                                       "with it")
    if nanonis is not None:
        host, _, port_text = nanonis.rpartition(":")
        if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise usage_error("--nanonis", f"{nanonis!r} is not HOST:PORT")
    if bus_exchange is not None and bus is None:
        raise usage_error("--bus-exchange", "goes with --bus, and only with it")
    if console_port is not None and not console:
        raise usage_error("--console-port", "goes with the console, not with --no-console")
    if serve_files is not None and not serve_files.is_dir():
        raise usage_error("--serve-files", f"{str(serve_files)!r} is not a folder")
    options = UpOptions(data_dir=data_dir, prefix=prefix, seed=seed, time_scale=time_scale,
                        ioc_port=ioc_port, tiled_port=tiled_port, timeout=timeout,
                        backend=backend, nanonis=nanonis, serve_files=serve_files, bus=bus,
                        bus_exchange=bus_exchange, console=console, console_port=console_port)
    try:
        state, started = up(options)
    except BusUnreachable as err:
        raise fail(f"{err}; nothing started", 2) from None
    except ServiceError as err:
        raise fail(str(err)) from None
    print("started:" if started else f"already up in {state.data_dir} (nothing started):")
    _print_state(state)
    ignored = [] if started else _ignored(ctx, options, state)
    if ignored:
        raise fail(f"ignored {', '.join(ignored)}: the services already run (seed "
                   f"{state.seed}, prefix {state.prefix}); to change them, `spm-bluesky down "
                   f"--data-dir {state.data_dir}` first")
    print(f"next: spm-bluesky shell --data-dir {state.data_dir}   (stop: spm-bluesky down "
          f"--data-dir {state.data_dir})")
    return 0


def down_command(data_dir: Path = DataDir) -> int:
    """Stop the services started by `up`; data and logs stay."""
    try:
        recorded = ServiceState.read(data_dir)
        running = {name: record.alive()
                   for name, record in (recorded.records() if recorded else {}).items()}
        state = down(data_dir)
    except ServiceError as err:
        raise fail(str(err)) from None
    if state is None:
        print(f"nothing to stop: {not_up(data_dir)}")
        return 0
    records = state.records()
    stopped = [f"{name} (pid {records[name].pid})" for name, alive in running.items() if alive]
    gone = [f"{name} (pid {records[name].pid})" for name, alive in running.items()
            if not alive]
    said = []
    if stopped:
        said.append(f"stopped {' and '.join(stopped)}")
    if gone:
        said.append(f"{' and '.join(gone)} had already exited")
    print(f"{'; '.join(said)}; data and logs stay in {data_dir}")
    return 0


def status_command(data_dir: Path = DataDir) -> int:
    """Show whether the services run and answer (exit status 1 if not)."""
    try:
        state, services = status(data_dir)
    except ServiceError as err:
        raise fail(str(err)) from None
    if state is None:
        print(not_up(data_dir))
        return 1
    print(f"services in {data_dir} (state file {state.path}):")
    for service in services:
        print(service.line())
    if all(s.running and s.answering for s in services):
        return 0
    down_names = [s.name for s in services if not s.running]
    silent = [s.name for s in services if s.running and not s.answering]
    if down_names:
        print(f"down: {', '.join(down_names)}; `spm-bluesky up --data-dir {data_dir}` "
              "starts them again alone, on the same ports and with the same key")
    if silent:
        print(f"not answering: {', '.join(silent)}; see their logs")
    return 1


def shell_command(
    data_dir: Path = DataDir,
    profile_dir: Path | None = typer.Option(
        None, help="IPython profile directory (default: the checkout's profile_collection)",
        show_default=False),
    ipython_args: list[str] | None = typer.Argument(
        None, metavar="[-- IPYTHON_ARGS...]", show_default=False,
        help="further arguments for IPython (after --)"),
) -> int:
    """Open IPython with profile_collection and the services' settings.

    With no services up it opens anyway, with a warning: the profile then says what is
    missing.
    """
    try:
        state = ServiceState.read(data_dir)
    except ServiceError as err:
        raise fail(str(err)) from None
    profile = profile_dir.resolve() if profile_dir else default_profile_dir()
    if not (profile / "startup").is_dir():
        raise fail(f"{profile} has no startup/ directory; give the profile with --profile-dir")
    if state is None:
        warn("shell", not_up(data_dir))
        environment = {**os.environ, HOME_ENV: str(data_dir)}
    else:
        for name, record in state.records().items():
            if not record.alive():
                warn("shell", f"{name} (pid {record.pid}) is not running; see `spm-bluesky status`")
        environment = shell_environment(state)
    argv = [sys.executable, "-m", "IPython", f"--profile-dir={profile}", *(ipython_args or [])]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, environment)
    return 0  # not reached: IPython replaced this process


def add_commands(app: typer.Typer) -> None:
    """Add ``up``, ``down``, ``status`` and ``shell`` to ``app``."""
    app.command("up")(up_command)
    app.command("down")(down_command)
    app.command("status")(status_command)
    app.command("shell")(shell_command)
