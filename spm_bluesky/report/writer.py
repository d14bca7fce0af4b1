"""Write a session's report files: one overview PNG and one self-contained HTML page."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from spm_bluesky.report.figures import FIGURE_PARTS, overview_figure, part_figure, png_bytes
from spm_bluesky.report.page import html_page
from spm_bluesky.report.reader import fetch_images, load_session
from spm_bluesky.report.session import (
    ImageRecord,
    SessionData,
    StoredImage,
    best_images,
    shown_episodes,
)

if TYPE_CHECKING:
    from bluesky_tiled_plugins.clients.catalog_of_bluesky_runs import CatalogOfBlueskyRuns


@dataclass(frozen=True)
class ReportFiles:
    """Where the report went."""

    png: Path
    html: Path


def write_report(data: SessionData, images: Sequence[StoredImage], out_dir: Path | str,
                 episode_images: Sequence[StoredImage] = ()) -> ReportFiles:
    """Write ``session-<uid>.png`` and ``session-<uid>.html`` into ``out_dir``.

    ``images`` are the gallery's (e.g. :func:`fetch_images` of :func:`best_images`),
    ``episode_images`` the frames of :func:`episode_records`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"session-{data.session_uid}"
    png = out / f"{stem}.png"
    png.write_bytes(png_bytes(overview_figure(data, images, episode_images)))
    parts: dict[str, bytes] = {part: png_bytes(part_figure(part, data,
                                                     episode_images if part == "episodes"
                                                     else images))
                               for part in FIGURE_PARTS}
    page = out / f"{stem}.html"
    page.write_text(html_page(data, parts, [record for record, _ in images]))
    return ReportFiles(png, page)


def episode_records(data: SessionData) -> list[ImageRecord]:
    """The before and after images of the episodes the report shows."""
    return [record for episode in shown_episodes(data)
            for record in (episode.before, episode.after) if record is not None]


def build_report(client: CatalogOfBlueskyRuns, session_uid: str,
                 out_dir: Path | str) -> ReportFiles:
    """Read the session from Tiled and write its PNG and HTML into ``out_dir``."""
    data = load_session(client, session_uid)
    return write_report(data, fetch_images(client, best_images(data)), out_dir,
                        fetch_images(client, episode_records(data)))
