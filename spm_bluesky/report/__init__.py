"""The session report: what an autonomous session did, built only from what Tiled stores.

============  ==========================================================================
``session``   what the report shows of a session (images, actions, discs, episodes), its yield
``reader``    builds that from the session's stored records (no matplotlib)
``figures``   approach-area maps, timeline, yield table, gallery (matplotlib, Agg)
``page``      the self-contained HTML page
``writer``    writes the PNG and the HTML page of a session
``reassess``  re-assesses the stored images with another assessor and compares decisions
============  ==========================================================================

    from spm_bluesky.report import build_report
    build_report(client, session_uid, "reports")
"""

from spm_bluesky.report.figures import (
    draw_gallery,
    draw_heights,
    draw_image,
    draw_maps,
    draw_timeline,
    draw_yield,
    image_figure,
    overview_figure,
    part_figure,
    png_bytes,
)
from spm_bluesky.report.page import PART_TITLES, html_page
from spm_bluesky.report.reader import fetch_images, load_session
from spm_bluesky.report.reassess import Reassessed, Reassessment, Rejudged, reassess_session
from spm_bluesky.report.session import (
    ConditioningEpisode,
    ImageRecord,
    SessionData,
    StoredImage,
    YieldFigures,
    best_images,
    verdict_reason,
    yield_figures,
)
from spm_bluesky.report.writer import ReportFiles, build_report, write_report
from spm_bluesky.storage import SessionNotFound, SessionSummary, list_sessions

__all__ = [
    "PART_TITLES",
    "ConditioningEpisode",
    "ImageRecord",
    "Reassessed",
    "Reassessment",
    "Rejudged",
    "ReportFiles",
    "SessionData",
    "SessionNotFound",
    "SessionSummary",
    "StoredImage",
    "YieldFigures",
    "best_images",
    "build_report",
    "draw_gallery",
    "draw_heights",
    "draw_image",
    "draw_maps",
    "draw_timeline",
    "draw_yield",
    "fetch_images",
    "html_page",
    "image_figure",
    "list_sessions",
    "load_session",
    "overview_figure",
    "part_figure",
    "png_bytes",
    "reassess_session",
    "verdict_reason",
    "write_report",
    "yield_figures",
]
