"""The session report: what an autonomous session did, built only from what Tiled stores.

============  ==========================================================================
``session``   typed records of a session (images, actions, discs, episodes) and its yield
``reader``    reads a session's runs from Tiled into those records (no matplotlib)
``figures``   approach-area maps, timeline, yield table, gallery (matplotlib, Agg)
``page``      the self-contained HTML page
``writer``    writes the PNG and the HTML page of a session
``replay``    re-assesses the stored images with another assessor and compares decisions
============  ==========================================================================

    from spm_bluesky.report import build_report
    build_report(client, session_uid, "reports")
"""

from spm_bluesky.report.figures import (
    draw_gallery,
    draw_maps,
    draw_timeline,
    draw_yield,
    overview_figure,
    part_figure,
    png_bytes,
)
from spm_bluesky.report.page import PART_TITLES, html_page
from spm_bluesky.report.reader import (
    SessionNotFound,
    SessionSummary,
    fetch_images,
    list_sessions,
    load_session,
)
from spm_bluesky.report.replay import Rejudged, ReplayComparison, replay_session
from spm_bluesky.report.session import (
    ActionRecord,
    Disc,
    Episode,
    ImageRecord,
    SessionData,
    StoredImage,
    YieldFigures,
    best_images,
    yield_figures,
)
from spm_bluesky.report.writer import ReportFiles, build_report, write_report

__all__ = [
    "PART_TITLES",
    "ActionRecord",
    "Disc",
    "Episode",
    "ImageRecord",
    "Rejudged",
    "ReplayComparison",
    "ReportFiles",
    "SessionData",
    "SessionNotFound",
    "SessionSummary",
    "StoredImage",
    "YieldFigures",
    "best_images",
    "build_report",
    "draw_gallery",
    "draw_maps",
    "draw_timeline",
    "draw_yield",
    "fetch_images",
    "html_page",
    "list_sessions",
    "load_session",
    "overview_figure",
    "part_figure",
    "png_bytes",
    "replay_session",
    "write_report",
    "yield_figures",
]
