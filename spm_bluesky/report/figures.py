"""The report's figures, drawn with matplotlib's object API (Agg, no pyplot state).

Each ``draw_*`` function fills a figure or subfigure from a
:class:`~spm_bluesky.report.session.SessionData`, so the one-figure PNG
(:func:`overview_figure`) and the HTML page's parts (:func:`part_figure`) share the code.
Lengths are shown in nm, heights in Å, times in simulated hours since the session's start.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Literal, cast

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.collections import PatchCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure, SubFigure
from matplotlib.patches import Circle, Patch, Rectangle

from spm_bluesky.domain import processing
from spm_bluesky.protocols import CLASSES
from spm_bluesky.report.session import SessionData, StoredImage, YieldFigures, yield_figures

#: The parts of the report drawn as their own figure (the yield is a table).
FigurePart = Literal["map", "timeline", "gallery"]
FIGURE_PARTS: tuple[FigurePart, ...] = ("map", "timeline", "gallery")
#: Colours of the true tip classes in the timeline.
CLASS_COLOURS = {"good": "#2ca02c", "multi_apex": "#9467bd", "blunt": "#8c564b",
                 "adsorbate": "#ff7f0e", "unstable": "#d62728"}
#: Approach-area panels and gallery images per row.
MAP_COLUMNS = 4
GALLERY_COLUMNS = 4


def draw_maps(fig: Figure | SubFigure, data: SessionData) -> list[Axes]:
    """One panel per approach area: cells coloured by p(good), action spots, blocked discs."""
    areas = data.areas or [0]
    columns = min(len(areas), MAP_COLUMNS)
    rows = math.ceil(len(areas) / columns)
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    norm, cmap = Normalize(0.0, 1.0), colormaps["RdYlGn"]
    for ax, area in zip(axes, areas, strict=False):
        images = [r for r in data.images if r.area == area]
        actions = [a for a in data.actions if a.area == area]
        discs = [d for d in data.discs if d.area == area]
        ax.add_collection(PatchCollection(
            [Circle((d.x * 1e9, d.y * 1e9), d.radius * 1e9) for d in discs],
            facecolor="0.6", edgecolor="0.35", alpha=0.35, linewidth=0.5))
        cells = PatchCollection(
            [Rectangle(((r.x - r.size / 2) * 1e9, (r.y - r.size / 2) * 1e9), r.size * 1e9,
                       r.size * 1e9) for r in images],
            cmap=cmap, norm=norm, edgecolor="none")
        cells.set_array(np.array([r.p_good for r in images]))
        ax.add_collection(cells)
        if actions:
            ax.scatter([a.x * 1e9 for a in actions], [a.y * 1e9 for a in actions], marker="x",
                       s=14, c="k", linewidths=0.8, label="action spot", zorder=3)
        extents = [(r.x, r.y, r.size / 2) for r in images] + \
                  [(a.x, a.y, a.radius) for a in actions] + [(d.x, d.y, d.radius) for d in discs]
        _zoom_to(ax, extents)
        kept = sum(r.kept for r in images)
        ax.set_title(f"approach area {area}: {len(images)} images,\n{kept} kept, "
                     f"{len(actions)} actions", fontsize=8)
        ax.set_xlabel("x (nm)")
        ax.set_ylabel("y (nm)")
        ax.set_aspect("equal")
        ax.tick_params(labelsize=7)
    for ax in axes[len(areas):]:
        ax.set_visible(False)
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=list(axes), label="p(good)",
                 shrink=0.8)
    return list(axes[: len(areas)])


def _zoom_to(ax: Axes, extents: Sequence[tuple[float, float, float]]) -> None:
    """Square limits around (x, y, radius) discs in metres, with a 10 nm margin."""
    if not extents:
        ax.set_xlim(-50, 50)
        ax.set_ylim(-50, 50)
        return
    arr = np.array(extents) * 1e9
    low = np.min(arr[:, :2] - arr[:, 2:3], axis=0) - 10
    high = np.max(arr[:, :2] + arr[:, 2:3], axis=0) + 10
    half = max(float(np.max(high - low)) / 2, 30.0)
    centre = (low + high) / 2
    ax.set_xlim(centre[0] - half, centre[0] + half)
    ax.set_ylim(centre[1] - half, centre[1] + half)


def draw_timeline(fig: Figure | SubFigure, data: SessionData) -> list[Axes]:
    """p(good) per image with actions, crashes, area moves and episodes; the true tip below."""
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    t = np.array([data.hours(r.clock) for r in data.images])
    p = np.array([r.p_good for r in data.images])
    kept = np.array([r.kept for r in data.images], dtype=bool)
    for episode in data.episodes:
        top.axvspan(data.hours(episode.start), data.hours(episode.end),
                    color="#1f77b4" if episode.success else "0.5", alpha=0.12, linewidth=0)
    if len(t):
        top.scatter(t[~kept], p[~kept], s=6, c="0.45", label="rejected image")
        top.scatter(t[kept], p[kept], s=8, c="#2ca02c", label="kept image")
    believed = [(data.hours(r.clock), r.tip_belief) for r in data.images
                if r.tip_belief is not None]
    if believed:
        top.plot(*zip(*believed, strict=True), color="#9467bd", linewidth=0.8,
                 label="P(tip good), filtered")
    keep = data.keep_threshold
    top.axhline(keep, color="0.3", linestyle=":", linewidth=0.8,
                label=f"keep above {keep:g} ({'P(tip good)' if believed else 'p(good)'})")
    if data.actions:
        top.plot([data.hours(a.clock) for a in data.actions], [-0.06] * len(data.actions),
                 "|", color="k", markersize=6, label="conditioning action")
    for i, clock in enumerate(data.crashes):
        top.axvline(data.hours(clock), color="#d62728", linewidth=1.2,
                    label="crash" if i == 0 else None)
    for i, clock in enumerate(data.area_moves):
        top.axvline(data.hours(clock), color="#1f77b4", linestyle="--", linewidth=1,
                    label="area move" if i == 0 else None)
    top.set_ylim(-0.12, 1.05)
    top.set_ylabel("p(good)")
    top.set_title("p(good) per image, conditioning actions (|), crashes, area moves; "
                  "shaded: conditioning episodes (blue: ended with a good tip)", fontsize=9)
    top.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=7, frameon=False)
    truth = [(data.hours(r.clock), r.truth) for r in data.images if r.truth]
    for start, end, label in _class_spans(truth, data.hours(data.end_clock)):
        bottom.axvspan(start, end, color=CLASS_COLOURS.get(label, "0.5"), linewidth=0)
    handles = [Patch(color=CLASS_COLOURS[c], label=c) for c in CLASSES]
    bottom.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=7,
                  frameon=False)
    bottom.set_yticks([])
    bottom.set_title("true tip class on the twin" if truth else
                     "true tip class: not recorded (not a twin session)", fontsize=9)
    bottom.set_xlabel("simulated time (h)")
    bottom.set_xlim(0, max(data.hours(data.end_clock), 1e-3))
    return [top, bottom]


def _class_spans(points: Sequence[tuple[float, str]],
                 end: float) -> list[tuple[float, float, str]]:
    """Runs of one class: (from, to, class), each lasting until the next change."""
    out: list[tuple[float, float, str]] = []
    for i, (time, label) in enumerate(points):
        until = points[i + 1][0] if i + 1 < len(points) else max(end, time)
        if out and out[-1][2] == label:
            out[-1] = (out[-1][0], until, label)
        else:
            out.append((time, until, label))
    return out


def draw_yield(fig: Figure | SubFigure, figures: YieldFigures) -> Axes:
    """The yield figures as a table."""
    ax = fig.subplots()
    ax.axis("off")
    table = ax.table(cellText=[[label, value] for label, value in figures.rows()],
                     colLabels=["", "value"], loc="center", cellLoc="left",
                     colWidths=[0.75, 0.25])
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    table.scale(1, 1.3)
    ax.set_title("yield", fontsize=10)
    return ax


def draw_gallery(fig: Figure | SubFigure, data: SessionData,
                 images: Sequence[StoredImage]) -> list[Axes]:
    """The given images, plane-subtracted, with p(good), the true class and the time."""
    rows = _gallery_rows(len(images))
    axes = fig.subplots(rows, GALLERY_COLUMNS, squeeze=False).ravel()
    for ax, (record, image) in zip(axes, images, strict=False):
        flat = processing.subtract_plane(np.asarray(image, dtype=np.float64))
        extent = (0, record.size * 1e9, 0, record.size * 1e9)
        ax.imshow(flat * 1e10, cmap="afmhot", origin="lower", extent=extent)
        truth = f", true {record.truth}" if record.truth else ""
        ax.set_title(f"p(good) {record.p_good:.2f}{truth}\n"
                     f"area {record.area}, {data.hours(record.clock):.2f} h",
                     fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[len(images):]:
        ax.axis("off")
    if not images:
        axes[0].text(0.5, 0.5, "no images", ha="center", va="center")
    fig.suptitle("best images (kept, highest p(good)); height in Å", fontsize=10)
    return list(axes[: len(images)])


def _map_rows(data: SessionData) -> int:
    return math.ceil(max(len(data.areas), 1) / MAP_COLUMNS)


def _map_columns(data: SessionData) -> int:
    return min(max(len(data.areas), 1), MAP_COLUMNS)


def _gallery_rows(count: int) -> int:
    return max(1, math.ceil(count / GALLERY_COLUMNS))


def overview_figure(data: SessionData, images: Sequence[StoredImage]) -> Figure:
    """The whole report as one figure: maps and yield, the timeline, the gallery."""
    map_rows, gallery_rows = _map_rows(data), _gallery_rows(len(images))
    fig = Figure(figsize=(15, 4.2 * map_rows + 5 + 2.6 * gallery_rows), layout="constrained")
    # Several rows: an array of subfigures (matplotlib types it as either).
    top, timeline, bottom = cast(np.ndarray, fig.subfigures(
        3, 1, height_ratios=[4.2 * map_rows, 5, 2.6 * gallery_rows]))
    maps, table = top.subfigures(1, 2, width_ratios=[_map_columns(data) + 0.4, 1.6])
    draw_maps(maps, data)
    draw_yield(table, yield_figures(data))
    draw_timeline(timeline, data)
    draw_gallery(bottom, data, images)
    fig.suptitle(f"session {data.session_uid}", fontsize=12)
    return fig


def part_figure(part: FigurePart, data: SessionData,
                images: Sequence[StoredImage] = ()) -> Figure:
    """One part of the report (``map``, ``timeline`` or ``gallery``) as its own figure."""
    if part == "map":
        fig = Figure(figsize=(4 * _map_columns(data) + 1.5, 4 * _map_rows(data)),
                     layout="constrained")
        draw_maps(fig, data)
    elif part == "timeline":
        fig = Figure(figsize=(12, 5), layout="constrained")
        draw_timeline(fig, data)
    elif part == "gallery":
        fig = Figure(figsize=(10, 2.8 * _gallery_rows(len(images))), layout="constrained")
        draw_gallery(fig, data, images)
    else:
        raise ValueError(f"unknown part {part!r}: map, timeline or gallery")
    return fig


def png_bytes(fig: Figure, dpi: int = 100) -> bytes:
    """The figure as PNG bytes, rendered with Agg whatever the session's backend."""
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
