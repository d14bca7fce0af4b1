"""``spm-bluesky report`` and ``replay``: what a session did, read from Tiled only.

The catalog is found as :mod:`spm_bluesky.commandline._catalog` says; a session is named by
its uid or a unique prefix of it.
"""

import sys
from pathlib import Path

import typer

from spm_bluesky.commandline._catalog import (
    CatalogUnavailable,
    SessionLookupError,
    open_catalog,
    resolve_session,
)
from spm_bluesky.commandline._common import (
    PROG,
    ApiKeyFile,
    DataDir,
    existing_file,
    fail,
    non_negative_int,
)
from spm_bluesky.ml.card import GATE
from spm_bluesky.services.launch import ServiceError

TILED_URI_HELP = "a Tiled server to read instead (API key: --api-key-file or the environment)"


def report_command(
    session: str | None = typer.Argument(
        None, metavar="SESSION", show_default=False,
        help="session uid, or a unique prefix of it"),
    out: Path | None = typer.Option(None, help="directory (default: <data dir>/reports)",
                                    show_default=False),
    list_sessions: bool = typer.Option(False, "--list", help="list the newest sessions"),
    data_dir: Path = DataDir,
    tiled_uri: str | None = typer.Option(None, help=TILED_URI_HELP, show_default=False),
    api_key_file: Path | None = ApiKeyFile,
) -> int:
    """PNG and HTML report of a session, from Tiled only.

    Approach-area maps, a timeline, yield figures and the best images of an autonomous
    session.
    """
    from spm_bluesky.report import SessionNotFound, build_report
    from spm_bluesky.report import list_sessions as newest_sessions

    try:
        with open_catalog(data_dir, tiled_uri, api_key_file) as catalog:
            if list_sessions or not session:
                if not list_sessions:
                    print(f"{PROG} report: give a SESSION uid (or a unique prefix); the "
                          "newest sessions:", file=sys.stderr)
                sessions = newest_sessions(catalog.client)
                if not sessions:
                    print("no sessions in this catalog (no run has a session_uid)")
                for found in sessions:
                    print(f"  {found.uid}  {found.runs} runs (first: {found.first_plan})")
                return 0 if list_sessions else 2
            uid = resolve_session(catalog, session)
            files = build_report(catalog.client, uid, out or data_dir / "reports")
    except (CatalogUnavailable, SessionLookupError, SessionNotFound, ServiceError) as err:
        raise fail(str(err)) from None
    print(f"wrote {files.png}\n      {files.html}")
    return 0


def replay_command(
    session: str = typer.Argument(..., metavar="SESSION",
                                  help="session uid, or a unique prefix of it"),
    assessor: Path = typer.Option(GATE, help="assessor: weight file (.pt) or gate file (.npz)",
                                  callback=existing_file, show_default="the shipped gate.npz"),
    rows: int = typer.Option(30, parser=non_negative_int,
                             help="flipped images listed at most"),
    data_dir: Path = DataDir,
    tiled_uri: str | None = typer.Option(None, help=TILED_URI_HELP, show_default=False),
    api_key_file: Path | None = ApiKeyFile,
) -> int:
    """Re-assess a session's images with another assessor.

    Re-assess every stored image of a session with another model and print how the
    keep/reject decisions and conditioning starts would differ.
    """
    from spm_bluesky.ml.assessor.assessor import load_assessor
    from spm_bluesky.report import SessionNotFound, reassess_session

    try:
        model = load_assessor(assessor)
    except (OSError, RuntimeError, KeyError, ValueError) as err:
        raise fail(f"cannot load the assessor {assessor}: {err}") from None
    try:
        with open_catalog(data_dir, tiled_uri, api_key_file) as catalog:
            comparison = reassess_session(catalog.client, resolve_session(catalog, session),
                                          model)
    except (CatalogUnavailable, SessionLookupError, SessionNotFound, ServiceError) as err:
        raise fail(str(err)) from None
    print(comparison.table(max_rows=rows))
    return 0


def add_commands(app: typer.Typer) -> None:
    """Add ``report`` and ``replay`` to ``app``."""
    app.command("report")(report_command)
    app.command("replay")(replay_command)
