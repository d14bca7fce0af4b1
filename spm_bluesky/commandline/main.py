"""The ``spm-bluesky`` command line: one typer app, one module per command group.

========================  ===============================================================
``services``              ``up``, ``down``, ``status``, ``shell``: the background services
``run``                   ``run``: an autonomous session, or a resumed one
``report``                ``report``, ``replay``: a session read back from Tiled
``files``                 ``import``, ``export``: STM image files into Tiled and out
``console``               ``console``: the web console (live view, gallery, labels, control)
``demo``                  ``demo``, ``gallery``: the system shown on the digital twin
``train``, ``evaluate``   ``train assessor|agent``, ``eval assessor|agent|session``
========================  ===============================================================

:func:`main` runs it. Every option is converted and checked while the command line is
parsed, before a command starts anything; a usage error is one line on stderr and exit
status 2, and output cut short by a closed pipe (``spm-bluesky status | head``) ends quietly.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import typer

from spm_bluesky.commandline import console, demo, files, report, run, services
from spm_bluesky.commandline._common import PROG, CommandFailed
from spm_bluesky.commandline.evaluate import eval_app
from spm_bluesky.commandline.train import train_app

#: Packages of the ML extra (``spm-bluesky[ml]``): the commands that need them say so.
ML_MODULES = ("torch", "gymnasium")

app = typer.Typer(
    name=PROG, help="Autonomous STM on Bluesky, EPICS and Tiled.", no_args_is_help=True,
    add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]})
services.add_commands(app)
run.add_commands(app)
report.add_commands(app)
files.add_commands(app)
demo.add_commands(app)
console.add_commands(app)
app.add_typer(train_app, name="train")
app.add_typer(eval_app, name="eval")


def _param_name(param: Any) -> str:
    """How an option (its long name) or an argument (its metavar) is named in messages."""
    opts = getattr(param, "opts", None)
    if getattr(param, "param_type_name", "") == "option" and opts:
        return str(max(opts, key=len))
    return str(getattr(param, "human_readable_name", "") or "")


def usage_line(err: typer.TyperException) -> str:
    """``spm-bluesky <command>: error: <what>``: a usage error on one line."""
    ctx = getattr(err, "ctx", None)
    prog = ctx.command_path if ctx is not None else PROG
    message = err.format_message()
    if message.startswith("Invalid value"):  # a bad option value: name the option first
        hint = getattr(err, "param_hint", None) or _param_name(getattr(err, "param", None))
        if not isinstance(hint, str):
            hint = "/".join(hint)
        message = f"{hint}: {err.message}" if hint else err.message
    message = message.removeprefix("Value error, ")
    return f"{prog}: error: {' '.join(message.split())}"


def _command_path(command: Any, args: list[str]) -> str:
    """``spm-bluesky <command> [<sub-command>]`` as named in ``args``."""
    path = [PROG]
    for arg in args:
        commands = getattr(command, "commands", None)
        if not commands or arg not in commands:
            break
        path.append(arg)
        command = commands[arg]
    return " ".join(path)


def _quiet_stdout() -> None:
    """Send what is left for stdout to /dev/null: its reader has gone (a closed pipe)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout has no file descriptor (captured in tests)
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``spm-bluesky`` console script; returns the exit status."""
    command = typer.main.get_command(app)
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        try:
            result = command.main(args=args, prog_name=PROG, standalone_mode=False)
        except CommandFailed as err:
            print(f"{_command_path(command, args)}: {err.message}", file=sys.stderr)
            result = err.code
        except typer.TyperException as err:
            ctx = getattr(err, "ctx", None)
            code = getattr(err, "exit_code", 1)
            if ctx is not None and err.format_message() == ctx.get_help():
                print(ctx.get_help())  # a group named without its sub-command
            else:
                print(usage_line(err) if code == 2 else f"{PROG}: {err.format_message()}",
                      file=sys.stderr)
            result = code
        except ModuleNotFoundError as err:
            if err.name not in ML_MODULES:
                raise
            print(f"{_command_path(command, args)}: needs {err.name}, which comes with the ML "
                  "extra: pip install 'spm-bluesky[ml]'", file=sys.stderr)
            result = 1
        except typer.Abort:
            print(f"{PROG}: aborted", file=sys.stderr)
            result = 130
        sys.stdout.flush()
    except BrokenPipeError:
        _quiet_stdout()
        return 1
    except SystemExit:  # the command line's own exit on a closed pipe
        _quiet_stdout()
        raise
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
