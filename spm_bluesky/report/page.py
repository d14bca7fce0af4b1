"""The report as one self-contained HTML page: figures inline as base64 PNGs, no external
resources, so the file can be mailed or archived on its own.

Sections carry stable ids (the keys of :data:`PART_TITLES`) and every yield figure a
``data-key`` attribute, so tests and scripts can read values back from the page. Each
gallery image and each episode has a caption saying why the loop decided what it did
(:func:`~spm_bluesky.report.session.verdict_reason`).
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Mapping, Sequence

from spm_bluesky.report.session import (
    ConditioningEpisode,
    ImageRecord,
    SessionData,
    best_score,
    session_title,
    shown_episodes,
    verdict_reason,
    yield_figures,
)

#: Titles of the report's parts (the HTML section ids are the keys).
PART_TITLES = {"map": "Approach areas", "timeline": "Timeline", "yield": "Yield",
               "gallery": "Best images", "episodes": "Conditioning episodes"}


def html_page(data: SessionData, parts: Mapping[str, bytes],
              gallery: Sequence[ImageRecord]) -> str:
    """The page: ``parts`` (``map``, ``timeline``, ``gallery`` and ``episodes`` PNGs)
    inline, the yield as a table, a caption per ``gallery`` image and per episode shown."""

    def img(part: str) -> str:
        encoded = base64.b64encode(parts[part]).decode("ascii")
        return (f'<img id="{part}-png" alt="{html.escape(PART_TITLES[part])}" '
                f'src="data:image/png;base64,{encoded}">')

    yield_rows = "\n".join(
        f'<tr><th>{html.escape(label)}</th><td data-key="{_data_key(label)}">'
        f"{html.escape(value)}</td></tr>" for label, value in yield_figures(data).rows())
    seed = data.twin_seed
    info = [("session", data.session_uid), ("runs", str(data.runs)),
            ("twin seed", "not a twin session" if seed is None else str(seed)),
            ("models", ", ".join(f"{k} {v}" for k, v in data.model_ids.items())
             or "none recorded"),
            ("keep threshold", f"P(tip good) > {data.keep_threshold:g}"),
            ("first run", data.first_time),
            ("last run", data.last_time)]
    info_rows = "\n".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                          for k, v in info)
    captions = "\n".join(_caption(data, record) for record in
                         sorted(gallery, key=lambda r: r.clock))
    episodes = shown_episodes(data)
    episode_items = "\n".join(_episode_caption(data, e) for e in episodes)
    title = html.escape(session_title(data))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 1300px; }}
img {{ max-width: 100%; }}
table {{ border-collapse: collapse; }}
th, td {{ border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; }}
</style></head>
<body>
<h1 id="title">{title}</h1>
<p>Built from the runs stored in Tiled for this session only. An image is kept or rejected as
a bad tip by the filtered P(tip good), the belief over the images so far, against the keep
threshold, not by its own p(good); debris, crashes and lost contact are judged from the image's
heights.</p>
<table id="session">{info_rows}</table>
<section id="yield"><h2>{PART_TITLES["yield"]}</h2>
<p>Every image is counted once, under its verdict.</p>
<table id="yield-table">
{yield_rows}
</table></section>
<section id="map"><h2>{PART_TITLES["map"]}</h2>
<p>Each scanned frame as a square coloured by its verdict; the discs the loop blocked, outlined
in the colour of why (debris, crash, lost contact, an action's forbidden radius); x: where a
conditioning action was applied. The legend counts each.</p>
{img("map")}</section>
<section id="timeline"><h2>{PART_TITLES["timeline"]}</h2>
<p>Top: kept (green) and bad-tip (red) images at the filtered P(tip good) that decided them,
the line it followed, the keep threshold, and each image's own p(good) (grey rings). Middle:
one row per kind of event, named with its count. Bottom: the twin's true tip class.</p>
{img("timeline")}</section>
<section id="gallery"><h2>{PART_TITLES["gallery"]}</h2>
<p>The kept images the assessor was surest of: ranked by the log-odds of p(good),
log(p / (1 - p)), which still separates images whose p(good) rounds to 1.00; shown in time
order.</p>
{img("gallery")}
<ol id="gallery-captions">
{captions}
</ol></section>
<section id="episodes"><h2>{PART_TITLES["episodes"]}</h2>
<p>{_episodes_shown(data, episodes)}</p>
{img("episodes")}
<ol id="episode-captions">
{episode_items}
</ol></section>
</body></html>
"""


def _caption(data: SessionData, r: ImageRecord) -> str:
    """A gallery image's list item: time, place, why it was kept, its scores, the truth,
    where it is stored."""
    truth = f", true {html.escape(r.truth)}" if r.truth else ""
    return (f"<li>{data.hours(r.clock):.2f} h, area {r.area}, x {r.x * 1e9:.0f} nm, "
            f"y {r.y * 1e9:.0f} nm: {html.escape(verdict_reason(r))}; "
            f"p(good) {r.p_good:.6f} (log-odds {best_score(r):.1f}){truth} "
            f"(run {html.escape(r.run_uid[:8])}, event {r.seq_num})</li>")


def _episode_caption(data: SessionData, episode: ConditioningEpisode) -> str:
    """An episode's list item: when, the actions by name, p(good) before and after."""
    number = data.episodes.index(episode) + 1
    actions = [a.name for a in data.actions if episode.start <= a.clock <= episode.end]
    before = "no image" if episode.before is None else \
        f"p(good) {episode.before.p_good:.2f}"
    after = "no image after" if episode.after is None else \
        f"p(good) {episode.after.p_good:.2f}"
    outcome = "ended with a good tip" if episode.success else "ended without a good tip"
    return (f'<li value="{number}">{data.hours(episode.start):.2f} h to '
            f"{data.hours(episode.end):.2f} h: before {before}; "
            f"{len(actions)} actions ({html.escape(', '.join(actions)) or 'none'}); "
            f"after {after}; {outcome}</li>")


def _episodes_shown(data: SessionData, shown: Sequence[ConditioningEpisode]) -> str:
    if not data.episodes:
        return "No conditioning episode."
    which = ("all" if len(shown) == len(data.episodes)
             else f"{len(shown)} of the {len(data.episodes)}, spread over the session:")
    return (f"The tip before the first action and after the last, {which} "
            "episodes, numbered in session order.")


def _data_key(label: str) -> str:
    """A yield label as an identifier: ``good images (kept)`` -> ``good_images``,
    ``rejected: bad tip (...)`` -> ``rejected_bad_tip``."""
    return re.sub(r"[^0-9A-Za-z]+", "_", label.split(" (")[0]).strip("_")
