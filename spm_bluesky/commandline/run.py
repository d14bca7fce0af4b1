"""``spm-bluesky run``: an autonomous session against the IOC and Tiled, or a resumed one.

Uses the services recorded in the data directory (``spm-bluesky up``); when none run there,
starts them (twin seed ``--seed``) and stops them again at the end. The session uid is
printed first, so a stopped session can be resumed with ``--resume UID``: its state comes
from Tiled alone (:mod:`spm_bluesky.autonomy.state`). Ctrl-C or SIGTERM stops at the next
checkpoint and closes the open run, so Tiled holds every image taken.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from spm_bluesky.services.launch import (
    HOME_ENV,
    ServiceError,
    ServiceState,
    UpOptions,
    data_dir_from,
)

POLICIES = ("agent", "heuristic", "random")
#: Where a session keeps its area-mask file (shared by its plans), inside the data directory.
AUTONOMY_DIR = "autonomy"


def make_policy(name: str, seed: int) -> Any:
    """The conditioning policy called ``name``; FileNotFoundError if the agent has no weights."""
    from spm_bluesky.ml.agent.policies import HeuristicPolicy, RandomPolicy

    if name == "agent":
        from spm_bluesky.ml.agent.dqn import load_agent

        return load_agent()
    if name == "heuristic":
        return HeuristicPolicy()
    if name == "random":
        return RandomPolicy(seed)
    raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(POLICIES)}")


def ensure_services(data_dir: Path, seed: int) -> bool:
    """Start the IOC and Tiled in ``data_dir`` unless they run there; True if started."""
    from spm_bluesky.services.launch import up

    state = ServiceState.read(data_dir)
    if state is not None and state.seed != seed:
        print(f"note: the services in {data_dir} run twin seed {state.seed}, not {seed}",
              file=sys.stderr)
    _, started = up(UpOptions(data_dir=data_dir, seed=seed))
    return started


def _stop_on_sigterm(request_pause: Callable[..., Any]) -> None:
    """SIGTERM does what a first Ctrl-C does: pause at the next checkpoint."""
    signal.signal(signal.SIGTERM, lambda signum, frame: request_pause(defer=True))


def run_session(args: argparse.Namespace) -> int:
    """The ``run`` command (see the module docstring)."""
    data_dir = data_dir_from(args.data_dir)
    try:
        policy = make_policy(args.policy, args.seed)
    except FileNotFoundError as err:
        print(f"spm-bluesky run: --policy agent needs the trained agent: {err}. "
              "Use --policy heuristic or --policy random meanwhile.", file=sys.stderr)
        return 2
    try:
        started = ensure_services(data_dir, args.seed)
    except ServiceError as err:
        print(f"spm-bluesky run: {err}", file=sys.stderr)
        return 1
    try:
        return _run(args, data_dir, policy)
    finally:
        if started and not args.keep_services:
            from spm_bluesky.services.launch import down

            down(data_dir)


def _run(args: argparse.Namespace, data_dir: Path, policy: Any) -> int:
    from bluesky import RunEngine
    from bluesky.utils import RunEngineInterrupted

    from spm_bluesky.autonomy.state import SessionNotFound, rebuild
    from spm_bluesky.autonomy.writer import session_writer
    from spm_bluesky.ml.assessor import load_assessor
    from spm_bluesky.plans.autonomous import autonomous_session
    from spm_bluesky.services.profile import (
        ServiceMissing,
        SessionSettings,
        connect_stm,
        connect_tiled,
    )

    settings = SessionSettings.resolve({**os.environ, HOME_ENV: str(data_dir)})
    settings.apply_epics_env()
    try:
        client = connect_tiled(settings)
        RE = RunEngine(call_returns_result=True)
        stm = connect_stm(settings)
    except ServiceMissing as err:
        print(f"spm-bluesky run: {err}", file=sys.stderr)
        return 1
    resume_state = None
    if args.resume:
        try:
            resume_state = rebuild(client, args.resume)
        except SessionNotFound as err:
            print(f"spm-bluesky run: cannot resume: {err}", file=sys.stderr)
            return 1
    session_uid = args.resume or uuid.uuid4().hex
    mask_path = data_dir / AUTONOMY_DIR / session_uid / "area_mask.json"
    RE.subscribe(session_writer(client))
    plan = autonomous_session(
        stm, load_assessor(), policy, hours=args.hours, images=args.images,
        session_uid=session_uid, bad_limit=args.bad_limit, run_images=args.run_images,
        mask_path=str(mask_path), resume_state=resume_state)
    action = "resuming" if resume_state else "session"
    print(f"{action} {session_uid} (stop: Ctrl-C; resume: spm-bluesky run --resume "
          f"{session_uid} --data-dir {data_dir} ...)", flush=True)
    _stop_on_sigterm(RE.request_pause)
    try:
        result = RE(plan)
    except RunEngineInterrupted:
        RE.stop()
        print(f"stopped; resume with: spm-bluesky run --resume {session_uid} "
              f"--data-dir {data_dir} ...", flush=True)
        return 130
    summary = result.plan_result
    print("done: " + " ".join(f"{key}={value:.3f}" if isinstance(value, float)
                              else f"{key}={value}" for key, value in summary.items()),
          flush=True)
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``run`` to the ``spm-bluesky`` parser."""
    text = "run (or resume) an autonomous DeepSPM session against the IOC and Tiled"
    parser = commands.add_parser("run", help=text, description=text)
    limit = parser.add_argument_group("when to stop (one or both)")
    limit.add_argument("--hours", type=_positive_float, default=None,
                       help="instrument hours (Status:Clock) to run")
    limit.add_argument("--images", type=_positive_int, default=None,
                       help="images to take (conditioning images included)")
    parser.add_argument("--seed", type=int, default=0,
                        help="twin seed when starting the services; random policy seed "
                             "(default: %(default)s)")
    parser.add_argument("--resume", metavar="SESSION", default=None,
                        help="continue this session from its state in Tiled")
    parser.add_argument("--data-dir", default=None,
                        help=f"data directory (default: ${HOME_ENV}, else ./spm-data)")
    parser.add_argument("--policy", choices=POLICIES, default="agent",
                        help="conditioning policy (default: %(default)s)")
    parser.add_argument("--bad-limit", type=int, default=10,
                        help="bad images in a row before conditioning (default: %(default)s)")
    parser.add_argument("--run-images", type=_positive_int, default=50,
                        help="images per autonomous_scan run (default: %(default)s)")
    parser.add_argument("--keep-services", action="store_true",
                        help="leave the IOC and Tiled running if this command started them")

    def handler(args: argparse.Namespace) -> int:
        if args.hours is None and args.images is None:
            parser.error("give --hours or --images")
        return run_session(args)

    parser.set_defaults(handler=handler)
