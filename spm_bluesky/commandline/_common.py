"""What every ``spm-bluesky`` command shares: checked option values, the data directory
option, and failures that end a command with one line.

Options are converted and checked while the command line is parsed, so a bad value is
reported (one line, exit status 2) before a command starts a service or writes a PV.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import typer

from spm_bluesky.services.launch import DEFAULT_DATA_DIR, HOME_ENV, data_dir_from

PROG = "spm-bluesky"
DATA_DIR_HELP = f"data directory (default: ${HOME_ENV}, else ./{DEFAULT_DATA_DIR})"
API_KEY_FILE_HELP = ("file holding the Tiled API key (default: $SPM_TILED_API_KEY, "
                     "$TILED_API_KEY, else the state file of `spm-bluesky up`)")


class CommandFailed(Exception):
    """End the running command: ``spm-bluesky <command>: <message>`` on stderr, and
    ``code`` as its exit status (1: it failed; 2: its options do not fit the situation)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def fail(message: str, code: int = 1) -> CommandFailed:
    """The exception that ends the command with ``message`` (``raise fail(...)``)."""
    return CommandFailed(message, code)


def usage_error(option: str, message: str) -> typer.BadParameter:
    """A usage error about ``option`` found after parsing (exit status 2)."""
    return typer.BadParameter(message, param_hint=option)


def _number(kind: type[int] | type[float], minimum: float, strict: bool,
            what: str) -> Callable[[str], int | float]:
    def parse(text: str) -> int | float:
        try:
            number = kind(str(text))
        except ValueError:
            raise typer.BadParameter(f"{str(text)!r} is not {what}") from None
        if number != number or number < minimum or (strict and number == minimum):
            raise typer.BadParameter(f"{str(text)!r} is not {what}")
        return number

    return parse


#: Option parsers: a bad value is a one-line usage error naming it.
positive_int = _number(int, 0, True, "a positive integer")
non_negative_int = _number(int, 0, False, "a non-negative integer")
positive_float = _number(float, 0.0, True, "a positive number")
non_negative_float = _number(float, 0.0, False, "a non-negative number")


def port(text: str) -> int:
    """Option parser: a TCP/UDP port number."""
    number = non_negative_int(text)
    if not 1 <= number <= 65535:
        raise typer.BadParameter(f"{str(text)!r} is not a port (1 to 65535)")
    return int(number)


def choice(*names: str) -> Callable[[str], str]:
    """Option parser: one of ``names``."""
    def parse(text: str) -> str:
        if text not in names:
            raise typer.BadParameter(f"{text!r} is not one of {', '.join(names)}")
        return text

    return parse


def existing_file(value: Path | None) -> Path | None:
    """Option callback: the file must exist (weights, key files)."""
    if value is not None and not value.is_file():
        raise typer.BadParameter(f"{str(value)!r} is not a file")
    return value


def _data_dir(value: Path | None) -> Path:
    path = data_dir_from(value)
    if path.exists() and not path.is_dir():
        raise typer.BadParameter(f"{str(path)!r} is not a directory",
                                 param_hint="--data-dir" if value else f"${HOME_ENV}")
    return path


#: ``--data-dir``: resolved (``$SPM_BLUESKY_HOME``, else ``./spm-data``) and checked.
DataDir = typer.Option(None, "--data-dir", metavar="DIR", help=DATA_DIR_HELP,
                       callback=_data_dir, show_default=False)
#: ``--api-key-file``: a file holding the Tiled API key (never the key itself).
ApiKeyFile = typer.Option(None, "--api-key-file", metavar="PATH", help=API_KEY_FILE_HELP,
                          callback=existing_file, show_default=False)


def warn(command: str, message: str) -> None:
    """``spm-bluesky <command>: warning: <message>`` on stderr."""
    import sys

    print(f"{PROG} {command}: warning: {message}", file=sys.stderr)
