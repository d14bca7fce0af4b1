"""``spm-bluesky demo``, ``report``, ``replay`` and ``eval session``.

``report`` and ``replay`` read only Tiled: the server given by ``--tiled-uri`` (API key from
``--api-key``, ``$SPM_TILED_API_KEY`` or ``$TILED_API_KEY``), else the one ``spm-bluesky up``
runs for the data directory, else an embedded server started over that directory's Tiled
data for the duration of the command.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from spm_bluesky.services.launch import (
    DEFAULT_DATA_DIR,
    HOME_ENV,
    TILED_DIR,
    ServiceState,
    data_dir_from,
)


class CatalogUnavailable(RuntimeError):
    """No Tiled server to read from, with what to do about it."""


@contextlib.contextmanager
def open_catalog(data_dir: Path, uri: str | None = None,
                 api_key: str | None = None) -> Iterator[Any]:
    """The Tiled catalog of runs to read a session from (see the module docstring)."""
    from spm_bluesky.storage.tiled import TiledConfig, connect, start_server

    if uri:
        key = api_key or os.environ.get("SPM_TILED_API_KEY") or os.environ.get("TILED_API_KEY")
        if not key:
            raise CatalogUnavailable(f"--tiled-uri {uri} needs an API key: --api-key or "
                                     "$SPM_TILED_API_KEY")
        yield connect(uri, key)
        return
    state = ServiceState.read(data_dir)
    if state is not None and state.tiled.alive():
        yield connect(state.tiled_uri, state.api_key)
        return
    tiled_dir = data_dir / TILED_DIR
    if not (tiled_dir / "catalog.db").is_file():
        raise CatalogUnavailable(
            f"no Tiled data in {tiled_dir}: give --data-dir (the demo's or `up`'s data "
            f"directory; default ${HOME_ENV}, else ./{DEFAULT_DATA_DIR}) or --tiled-uri")
    with start_server(TiledConfig(tiled_dir)) as server:
        yield server.client()


def _print_sessions(client: Any) -> None:
    from spm_bluesky.report import list_sessions

    sessions = list_sessions(client)
    if not sessions:
        print("no sessions in this catalog (no run has a session_uid)")
    for session in sessions:
        print(f"  {session.uid}  {session.runs} runs (first: {session.first_plan})")


def _cmd_report(args: argparse.Namespace) -> int:
    from spm_bluesky.report import SessionNotFound, build_report

    data_dir = data_dir_from(args.data_dir)
    try:
        with open_catalog(data_dir, args.tiled_uri, args.api_key) as client:
            if args.list or not args.session:
                if not args.list:
                    print("spm-bluesky report: give a SESSION uid; the newest sessions:",
                          file=sys.stderr)
                _print_sessions(client)
                return 0 if args.list else 2
            out = Path(args.out) if args.out else data_dir / "reports"
            files = build_report(client, args.session, out)
    except (CatalogUnavailable, SessionNotFound) as err:
        print(f"spm-bluesky report: {err}", file=sys.stderr)
        return 1
    print(f"wrote {files.png}\n      {files.html}")
    return 0


def _cmd_replay(args: argparse.Namespace) -> int:
    from spm_bluesky.ml.assessor.assessor import load_assessor
    from spm_bluesky.report import SessionNotFound, replay_session

    try:
        assessor = load_assessor(args.assessor)
    except (FileNotFoundError, RuntimeError, KeyError) as err:
        print(f"spm-bluesky replay: cannot load the assessor {args.assessor}: {err}",
              file=sys.stderr)
        return 1
    try:
        with open_catalog(data_dir_from(args.data_dir), args.tiled_uri, args.api_key) as client:
            comparison = replay_session(client, args.session, assessor)
    except (CatalogUnavailable, SessionNotFound) as err:
        print(f"spm-bluesky replay: {err}", file=sys.stderr)
        return 1
    print(comparison.table(max_rows=args.rows))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from spm_bluesky.evaluation.demo import DemoOptions, run_demo
    from spm_bluesky.evaluation.session import MissingAgentError
    from spm_bluesky.services.launch import ServiceError

    options = DemoOptions(
        data_dir=data_dir_from(args.data_dir), hours=args.hours, seed=args.seed,
        out_dir=Path(args.out).resolve() if args.out else None, policy=args.policy,
        agent=Path(args.agent) if args.agent else None,
        assessor=Path(args.assessor) if args.assessor else None)
    try:
        result = run_demo(options)
    except (ValueError, MissingAgentError, ServiceError) as err:
        print(f"spm-bluesky demo: {err}", file=sys.stderr)
        return 1
    tally = result.tally
    print(f"{'interrupted' if result.interrupted else 'done'} after {result.wall_s:.0f} s: "
          f"{tally.simulated_hours:.2f} simulated h, {tally.images} images, {tally.kept} kept "
          f"({tally.truly_good} with a truly good tip), {tally.episodes} conditioning "
          f"episodes, {tally.actions} actions, {tally.crashes} crashes")
    print(f"report: {result.report.html}\n        {result.report.png}")
    print(f"again from Tiled: spm-bluesky report {result.session_uid} --data-dir "
          f"{options.data_dir}")
    return 130 if result.interrupted else 0


def _cmd_eval_session(args: argparse.Namespace) -> int:
    from spm_bluesky.evaluation.session import (
        MissingAgentError,
        System,
        evaluate_session,
        write_json,
    )

    try:
        systems = [System(name.strip()) for name in args.systems.split(",") if name.strip()]
    except ValueError:
        print(f"spm-bluesky eval session: --systems takes names among "
              f"{', '.join(s.value for s in System)}, not {args.systems!r}", file=sys.stderr)
        return 2
    try:
        evaluation = evaluate_session(args.hours, args.seed, systems,
                                      assessor_path=args.assessor, agent_path=args.agent,
                                      degraded_start=args.degraded_start,
                                      degrade_every=args.degrade_every)
    except (MissingAgentError, ValueError) as err:
        print(f"spm-bluesky eval session: {err}", file=sys.stderr)
        return 1
    print(evaluation.table())
    if args.json:
        print(f"wrote {write_json(evaluation, args.json)}")
    return 0


def _catalog_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default=None,
                        help=f"data directory (default: ${HOME_ENV}, else ./{DEFAULT_DATA_DIR})")
    parser.add_argument("--tiled-uri", default=None, help="a Tiled server instead")
    parser.add_argument("--api-key", default=None,
                        help="its API key (default: $SPM_TILED_API_KEY or $TILED_API_KEY)")


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``demo``, ``report``, ``replay`` and ``eval session``."""
    from spm_bluesky.commandline.agent import subcommands

    demo = commands.add_parser(
        "demo", help="start the IOC and Tiled, run an accelerated autonomous session, report",
        description="Start the twin's IOC and the embedded Tiled server, run an autonomous "
                    "session at full speed with a live progress line, write the report, stop "
                    "the services (also on Ctrl-C).")
    demo.add_argument("--hours", type=float, default=2.0,
                      help="simulated hours (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0, help="twin seed (default: %(default)s)")
    demo.add_argument("--data-dir", default=None,
                      help=f"data directory (default: ${HOME_ENV}, else ./{DEFAULT_DATA_DIR})")
    demo.add_argument("--out", default=None, help="report directory (default: <data dir>/reports)")
    demo.add_argument("--policy", choices=("agent", "heuristic", "random"), default="agent",
                      help="conditioning policy (default: the trained agent)")
    demo.add_argument("--agent", default=None, help="agent weights (default: shipped)")
    demo.add_argument("--assessor", default=None, help="assessor weights (default: shipped)")
    demo.set_defaults(handler=_cmd_demo)

    report = commands.add_parser(
        "report", help="PNG and HTML report of a session, from Tiled only",
        description="Approach-area maps, a timeline, yield figures and the best images of "
                    "an autonomous session, read from Tiled.")
    report.add_argument("session", nargs="?", help="session uid")
    report.add_argument("--out", default=None, help="directory (default: <data dir>/reports)")
    report.add_argument("--list", action="store_true", help="list the newest sessions")
    _catalog_options(report)
    report.set_defaults(handler=_cmd_report)

    replay = commands.add_parser(
        "replay", help="re-assess a session's images with another assessor",
        description="Re-assess every stored image of a session with another model and print "
                    "how the keep/reject decisions and conditioning starts would differ.")
    replay.add_argument("session", help="session uid")
    replay.add_argument("--assessor", required=True, help="assessor weights (.pt)")
    replay.add_argument("--rows", type=int, default=30,
                        help="flipped images listed at most (default: %(default)s)")
    _catalog_options(replay)
    replay.set_defaults(handler=_cmd_replay)

    from spm_bluesky.evaluation.session import DEGRADE_EVERY_HOURS

    evaluate = subcommands(commands, "eval").add_parser(
        "session", help="the autonomous loop with full, random, heuristic and oracle systems",
        description="Run the autonomous session on a fresh twin IOC with the same seed for "
                    "each system; print good images per simulated hour and the counts.")
    evaluate.add_argument("--hours", type=float, default=1.0,
                          help="simulated hours per system (default: %(default)s)")
    evaluate.add_argument("--seed", type=int, default=0, help="twin seed (default: %(default)s)")
    evaluate.add_argument("--json", default=None, help="write the figures as JSON here")
    evaluate.add_argument("--systems", default="full,random,heuristic,oracle",
                          help="comma-separated (default: %(default)s)")
    evaluate.add_argument("--assessor", default=None, help="assessor weights (default: shipped)")
    evaluate.add_argument("--agent", default=None, help="agent weights (default: shipped)")
    evaluate.add_argument("--degraded-start", action="store_true",
                          help="degrade the tip before each session (Sim:Degrade), so that "
                               "short sessions must condition it too")
    evaluate.add_argument("--degrade-every", type=float, default=DEGRADE_EVERY_HOURS,
                          metavar="HOURS",
                          help="also degrade the tip on purpose every HOURS of instrument "
                               "time, the same for every system, so that conditioning is a "
                               "real share of the session; 0: only the twin's own "
                               "degradations (default: %(default)s)")
    evaluate.set_defaults(handler=_cmd_eval_session)
