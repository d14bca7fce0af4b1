"""The report as one self-contained HTML page: figures inline as base64 PNGs, no external
resources, so the file can be mailed or archived on its own.

Sections carry stable ids (the keys of :data:`PART_TITLES`) and every yield figure a
``data-key`` attribute, so tests and scripts can read values back from the page.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence

from spm_bluesky.report.session import ImageRecord, SessionData, yield_figures

#: Titles of the report's parts (the HTML section ids are the keys).
PART_TITLES = {"map": "Approach areas", "timeline": "Timeline", "yield": "Yield",
               "gallery": "Best images"}


def html_page(data: SessionData, parts: Mapping[str, bytes],
              gallery: Sequence[ImageRecord]) -> str:
    """The page: ``parts`` (``map``, ``timeline`` and ``gallery`` PNGs) inline, the yield as
    a table, a caption per ``gallery`` image."""

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
            ("models", ", ".join(f"{k} {v}" for k, v in data.model_ids.items())),
            ("first run", data.first_time),
            ("last run", data.last_time)]
    info_rows = "\n".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                          for k, v in info)
    captions = "\n".join(_caption(data, record) for record in gallery)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>spm-bluesky session {html.escape(data.session_uid)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 1300px; }}
img {{ max-width: 100%; }}
table {{ border-collapse: collapse; }}
th, td {{ border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; }}
</style></head>
<body>
<h1>Autonomous session {html.escape(data.session_uid)}</h1>
<p>Built from the runs stored in Tiled for this session only.</p>
<table id="session">{info_rows}</table>
<section id="yield"><h2>{PART_TITLES["yield"]}</h2>
<table id="yield-table">
{yield_rows}
</table></section>
<section id="map"><h2>{PART_TITLES["map"]}</h2>
<p>Scanned cells coloured by p(good), conditioning action spots (x), blocked discs (grey).</p>
{img("map")}</section>
<section id="timeline"><h2>{PART_TITLES["timeline"]}</h2>
{img("timeline")}</section>
<section id="gallery"><h2>{PART_TITLES["gallery"]}</h2>
{img("gallery")}
<ol>
{captions}
</ol></section>
</body></html>
"""


def _caption(data: SessionData, r: ImageRecord) -> str:
    """A gallery image's list item: p(good), place, time, true class, where it is stored."""
    truth = f", true {html.escape(r.truth)}" if r.truth else ""
    return (f"<li>p(good) {r.p_good:.3f}, area {r.area}, x {r.x * 1e9:.0f} nm, "
            f"y {r.y * 1e9:.0f} nm, {data.hours(r.clock):.2f} h{truth} "
            f"(run {html.escape(r.run_uid[:8])}, event {r.seq_num})</li>")


def _data_key(label: str) -> str:
    """A yield label as an identifier: ``good images (kept)`` -> ``good_images``."""
    return "".join(c if c.isalnum() else "_" for c in label.split(" (")[0]).strip("_")
