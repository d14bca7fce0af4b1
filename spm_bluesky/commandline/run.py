"""``spm-bluesky run``: an autonomous session against the IOC and Tiled, or a resumed one.

Uses the services recorded in the data directory (``spm-bluesky up``); when none run there,
starts them (twin seed ``--seed``) and stops them again at the end. The session uid is
printed first, so a stopped session can be resumed with ``--resume UID`` (or a unique
prefix of it): its state comes from Tiled and the journal (:mod:`spm_bluesky.autonomy.state`),
read before the IOC is connected. ``--hours`` and ``--images`` count the whole session, so a
resumed session needs limits above what it has done. Every document goes to the journal in
the data directory (fsynced) before the session goes on, and a drain thread fills Tiled from
there (:mod:`spm_bluesky.storage.durable`): a Tiled outage delays storage and never stops the
session. Before the IOC is touched the journal must open and the disk have room
(:func:`~spm_bluesky.storage.preflight.check_durable`). Ctrl-C or SIGTERM stops at the next
checkpoint and closes the open run; a kill leaves it to the next start, which closes it with
``exit_status="abort"``. The web console pauses, resumes and stops the session through
control files in the data directory (:mod:`spm_bluesky.autonomy.control`); each applied
command is stored as a ``session_control`` run; a stop from there ends the command as
Ctrl-C does (exit status 130).

In facility mode (``spm-bluesky up --bus``) every document is still journaled first, and then
published to the broker, the session waiting for its confirm
(:mod:`spm_bluesky.storage.bus_publish`); no drain runs, the consumer process is the one
writer into Tiled. A broker that does not answer at the start ends the command (exit status
2) before the IOC is touched.
"""

import contextlib
import os
import signal
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from spm_bluesky.autonomy.rules import UNSURE_LIMIT
from spm_bluesky.commandline._catalog import (
    Catalog,
    SessionLookupError,
    resolve_session,
    tiled_data,
)
from spm_bluesky.commandline._common import (
    DataDir,
    choice,
    fail,
    non_negative_int,
    positive_float,
    positive_int,
    usage_error,
    warn,
)
from spm_bluesky.commandline.services import not_up
from spm_bluesky.ml.agent.policies import INSTRUMENT_POLICIES
from spm_bluesky.services.launch import (
    HOME_ENV,
    BusUnreachable,
    ServiceError,
    ServiceState,
    UpOptions,
    down,
    up,
)

#: Where a session keeps its area-mask file (shared by its plans), inside the data directory.
AUTONOMY_DIR = "autonomy"


def ensure_services(data_dir: Path, seed: int) -> bool:
    """Start the IOC and Tiled in ``data_dir`` unless they run there; True if started."""
    state = ServiceState.read(data_dir)
    if state is not None and state.seed != seed:
        warn("run", f"the services in {data_dir} run twin seed {state.seed}, not {seed}")
    _, started = up(UpOptions(data_dir=data_dir, seed=seed))
    return started


def services_up(data_dir: Path) -> bool:
    """True if every service recorded in ``data_dir`` runs."""
    state = ServiceState.read(data_dir)
    return state is not None and all(record.alive() for record in state.records().values())


def _stop_on_sigterm(stop: Callable[[], Any]) -> None:
    """SIGTERM does what a first Ctrl-C does: stop at the next checkpoint."""
    signal.signal(signal.SIGTERM, lambda signum, frame: stop())


def _check_limits(state: Any, hours: float | None, images: int | None) -> None:
    """A usage error if a limit is one the resumed session has already reached."""
    uid = state.session_uid
    if images is not None and state.images >= images:
        raise usage_error("--images", f"session {uid} already has {state.images} images and "
                                      f"the limit counts the whole session: give more than "
                                      f"{state.images}")
    done = state.elapsed / 3600.0
    if hours is not None and done >= hours:
        raise usage_error("--hours", f"session {uid} already ran {done:.3f} instrument hours "
                                     f"and the limit counts the whole session: give more "
                                     f"than {done:.3f}")


def run_command(
    hours: float | None = typer.Option(
        None, parser=positive_float, show_default=False,
        help="instrument hours (Status:Clock) of the whole session, resumes included"),
    images: int | None = typer.Option(
        None, parser=positive_int, show_default=False,
        help="images of the whole session, resumes and conditioning images included"),
    seed: int = typer.Option(0, parser=non_negative_int,
                             help="twin seed when starting the services; random policy seed"),
    resume: str | None = typer.Option(
        None, metavar="SESSION", show_default=False,
        help="continue this session (its uid or a unique prefix) from its state in Tiled"),
    data_dir: Path = DataDir,
    policy: str = typer.Option("agent", parser=choice(*INSTRUMENT_POLICIES),
                               metavar="[" + "|".join(INSTRUMENT_POLICIES) + "]",
                               help="conditioning policy"),
    bad_limit: int = typer.Option(10, parser=positive_int,
                                  help="bad images in a row before conditioning"),
    run_images: int = typer.Option(50, parser=positive_int,
                                   help="images per autonomous_scan run"),
    unsure_limit: int = typer.Option(
        UNSURE_LIMIT, parser=positive_int,
        help="images in a row the assessor is unsure of before the session pauses for a "
             "person"),
    keep_services: bool = typer.Option(
        False, "--keep-services",
        help="leave the IOC and Tiled running if this command started them"),
) -> int:
    """Run (or resume) an autonomous DeepSPM session against the IOC and Tiled.

    Stops at --hours or --images, whichever comes first (give one or both); both count the
    whole session, so a resumed session goes on until its totals reach them.
    """
    from spm_bluesky.ml.agent.policies import MissingAgentError, policy_by_name

    if hours is None and images is None:
        raise typer.BadParameter("give --hours or --images")
    try:
        conditioning = policy_by_name(policy, seed=seed)
    except MissingAgentError as err:
        raise fail(f"--policy agent needs the trained agent: {err}. Use --policy heuristic "
                   "or --policy random meanwhile.", 2) from None
    try:
        if resume and not services_up(data_dir) and not tiled_data(data_dir):
            raise fail(f"cannot resume {resume}: {not_up(data_dir)}; and {data_dir} holds no "
                       "Tiled data to find the session in")
        started = ensure_services(data_dir, seed)
    except BusUnreachable as err:
        raise fail(f"{err}; nothing started", 2) from None
    except ServiceError as err:
        raise fail(str(err)) from None
    try:
        return _run(data_dir, conditioning, resume=resume, hours=hours, images=images,
                    bad_limit=bad_limit, unsure_limit=unsure_limit, run_images=run_images)
    finally:
        if started and not keep_services:
            down(data_dir)


def _run(data_dir: Path, policy: Any, *, resume: str | None, hours: float | None,
         images: int | None, bad_limit: int, unsure_limit: int, run_images: int) -> int:
    from spm_bluesky.autonomy.state import SessionNotFound, rebuild
    from spm_bluesky.services.profile import (
        ServiceMissing,
        SessionSettings,
        connect_stm,
        connect_tiled,
    )
    from spm_bluesky.storage.bus import BusError
    from spm_bluesky.storage.journal import JournalError, journal_dir
    from spm_bluesky.storage.preflight import check_durable

    settings = SessionSettings.resolve({**os.environ, HOME_ENV: str(data_dir)})
    settings.apply_epics_env()
    try:
        check_durable(data_dir)
        client = connect_tiled(settings)
    except (ServiceMissing, JournalError) as err:
        raise fail(str(err)) from None
    with contextlib.ExitStack() as stack:
        try:
            document_path = stack.enter_context(_document_path(data_dir, settings))
        except JournalError as err:
            raise fail(str(err)) from None
        except BusError as err:
            raise fail(f"{err}; nothing started", 2) from None
        resume_state = None
        if resume:
            catalog = Catalog(client, f"Tiled at {settings.tiled_uri}",
                              f" --data-dir {data_dir}")
            try:
                uid = resolve_session(catalog, resume)
                resume_state = rebuild(client, uid, journal=journal_dir(data_dir),
                                       mask_file=mask_path_of(data_dir, uid))
            except (SessionLookupError, SessionNotFound) as err:
                raise fail(f"cannot resume: {err}") from None
            _check_limits(resume_state, hours, images)
            print(f"from the journal and Tiled: {resume_state.images} images, "
                  f"{resume_state.elapsed / 3600.0:.3f} instrument hours so far; the limits "
                  "count the whole session", flush=True)

        from bluesky import RunEngine

        RE = RunEngine(call_returns_result=True)
        try:
            stm = connect_stm(settings)
        except ServiceMissing as err:
            raise fail(str(err)) from None
        return _go(RE, document_path, stm, policy, data_dir, resume_state, hours=hours,
                   images=images, bad_limit=bad_limit, unsure_limit=unsure_limit,
                   run_images=run_images)


def _document_path(data_dir: Path, settings: Any) -> contextlib.AbstractContextManager[Any]:
    """Where the session's documents go: the journal and its drain into Tiled, or, with a
    broker recorded by ``up --bus``, the journal and the broker (BusError if it is away)."""
    from spm_bluesky.services.profile import connect_tiled

    state = ServiceState.read(data_dir)
    if state is None or state.bus_url is None:
        from spm_bluesky.storage.durable import durable_path

        return durable_path(data_dir, lambda: connect_tiled(settings))
    from spm_bluesky.services.bus_launch import recorded_address
    from spm_bluesky.storage.bus_publish import bus_path

    print(f"facility mode: documents go to the broker at {state.bus_url}", flush=True)
    from spm_bluesky.storage.bus import EXCHANGE

    return bus_path(data_dir, recorded_address(data_dir, state.bus_url),
                    state.bus_exchange or EXCHANGE)


def mask_path_of(data_dir: Path, session_uid: str) -> Path:
    """The area-mask file of a session in ``data_dir``."""
    return data_dir / AUTONOMY_DIR / session_uid / "area_mask.json"


def _go(RE: Any, document_path: Any, stm: Any, policy: Any, data_dir: Path, resume_state: Any,
        *, hours: float | None, images: int | None, bad_limit: int, unsure_limit: int,
        run_images: int) -> int:
    """Run the session plan, printing its uid first and its counters at the end."""
    from spm_bluesky.autonomy.control import SessionControl, StopCause, run_plan
    from spm_bluesky.ml.assessor import load_assessor
    from spm_bluesky.plans.autonomous import autonomous_session

    session_uid = resume_state.session_uid if resume_state else uuid.uuid4().hex
    mask_path = mask_path_of(data_dir, session_uid)
    RE.subscribe(document_path)
    plan = autonomous_session(
        stm, load_assessor(), policy, hours=hours, images=images,
        session_uid=session_uid, bad_limit=bad_limit, unsure_limit=unsure_limit,
        run_images=run_images, mask_path=str(mask_path), resume_state=resume_state,
        safety=document_path.mark)
    action = "resuming" if resume_state else "session"
    with SessionControl(data_dir, session_uid, RE, document_path) as control:
        _stop_on_sigterm(control.terminate)
        print(f"{action} {session_uid} (pause, resume, stop: spm-bluesky console; stop: "
              f"Ctrl-C; resume: spm-bluesky run --resume {session_uid} --data-dir {data_dir} "
              "...)", flush=True)
        result = run_plan(RE, plan, control)
    if isinstance(result, StopCause):
        why = ("stopped from the console" if result == StopCause.REQUESTED else
               f"stopped (if the assessor was unsure of {unsure_limit} images in a row: look "
               "at the last images with spm-bluesky report)")
        print(f"{why}; resume with: spm-bluesky run --resume {session_uid} --data-dir "
              f"{data_dir} ...", flush=True)
        return 130
    summary = result.plan_result
    print("done: " + " ".join(f"{key}={value:.3f}" if isinstance(value, float)
                              else f"{key}={value}" for key, value in summary.items()),
          flush=True)
    return 0


def add_commands(app: typer.Typer) -> None:
    """Add ``run`` to ``app``."""
    app.command("run")(run_command)
