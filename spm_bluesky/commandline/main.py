"""The ``spm-bluesky`` command line: one subcommand per job."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from spm_bluesky.commandline.agent import add_commands as add_agent_commands
from spm_bluesky.commandline.assessor import add_commands as add_ml_commands
from spm_bluesky.commandline.report import add_commands as add_report_commands
from spm_bluesky.commandline.run import add_commands as add_autonomy_commands
from spm_bluesky.services.launch import add_commands as add_service_commands

Handler = Callable[[argparse.Namespace], int]


def _gallery(args: argparse.Namespace) -> int:
    from spm_bluesky.evaluation.gallery import render_gallery

    out = render_gallery(Path(args.out), seed=args.seed)
    print(f"wrote {out}: one image per tip class and each action's before/after")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="spm-bluesky", description="Autonomous STM on Bluesky, EPICS and Tiled.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gallery = commands.add_parser(
        "gallery", help="render one twin image per tip class and each action's before/after")
    gallery.add_argument("--out", default="gallery.png", help="PNG to write (default: %(default)s)")
    gallery.add_argument("--seed", type=int, default=0, help="twin seed (default: %(default)s)")
    gallery.set_defaults(handler=_gallery)
    add_service_commands(commands)
    add_ml_commands(commands)
    add_agent_commands(commands)
    add_report_commands(commands)
    add_autonomy_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``spm-bluesky`` console script."""
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
