"""The report's figures, drawn with matplotlib's object API (Agg, no pyplot state).

Each ``draw_*`` function fills a figure or subfigure from a
:class:`~spm_bluesky.report.session.SessionData`, so the one-figure PNG
(:func:`overview_figure`), the HTML page's parts (:func:`part_figure`) and the web console
share the code. Lengths are shown in nm, heights in Å, times in simulated hours since the
session's start. Every mark has a legend entry; every verdict its own colour
(:mod:`~spm_bluesky.report.style`); no text is smaller than :data:`~.style.FONT`.
The images (gallery, episodes, one frame) are drawn by :mod:`~spm_bluesky.report.images`.
"""

from __future__ import annotations

import io
import math
from collections import Counter
from collections.abc import Sequence
from typing import Literal, cast

import numpy as np
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PatchCollection
from matplotlib.figure import Figure, SubFigure
from matplotlib.lines import Line2D
from matplotlib.patches import Circle, Patch, Rectangle

from spm_bluesky.autonomy.rules import Verdict
from spm_bluesky.protocols import CLASSES
from spm_bluesky.report.images import (
    draw_episodes,
    draw_gallery,
    draw_heights,
    draw_image,
    episode_rows,
    gallery_rows,
    image_figure,
)
from spm_bluesky.report.session import (
    CONDITIONING,
    ConditioningEpisode,
    SessionData,
    StoredImage,
    YieldFigures,
    session_title,
    shown_episodes,
    yield_figures,
)
from spm_bluesky.report.style import FONT, TITLE_FONT, disc_mark, verdict_mark

__all__ = ["FIGURE_PARTS", "FigurePart", "draw_episodes", "draw_gallery", "draw_heights",
           "draw_image", "draw_maps", "draw_timeline", "draw_yield", "image_figure",
           "overview_figure", "part_figure", "png_bytes"]

#: The parts of the report drawn as their own figure (the yield is a table).
FigurePart = Literal["map", "timeline", "gallery", "episodes"]
FIGURE_PARTS: tuple[FigurePart, ...] = ("map", "timeline", "gallery", "episodes")
#: Colours of the true tip classes in the timeline.
CLASS_COLOURS = {"good": "#2ca02c", "multi_apex": "#9467bd", "blunt": "#8c564b",
                 "adsorbate": "#ff7f0e", "unstable": "#d62728"}
#: Approach-area panels per row.
MAP_COLUMNS = 4
#: Verdicts drawn in the timeline's event rows (they do not depend on the tip belief).
EVENT_VERDICTS = (Verdict.DEBRIS, Verdict.UNSURE, Verdict.LOST_CONTACT)


def draw_maps(fig: Figure | SubFigure, data: SessionData) -> list[Axes]:
    """One panel per approach area: each scanned frame coloured by its verdict, the discs the
    loop blocked coloured by why, the spots where actions were applied; one legend."""
    areas = data.areas or [0]
    columns = min(len(areas), MAP_COLUMNS)
    rows = math.ceil(len(areas) / columns)
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax, area in zip(axes, areas, strict=False):
        images = [r for r in data.images if r.area == area]
        actions = [a for a in data.actions if a.area == area]
        discs = [d for d in data.discs if d.area == area]
        ax.add_collection(PatchCollection(
            [Circle((d.x * 1e9, d.y * 1e9), d.radius * 1e9) for d in discs],
            facecolor=[disc_mark(d.reason).colour for d in discs], alpha=0.18,
            edgecolor="none"))
        ax.add_collection(PatchCollection(
            [Circle((d.x * 1e9, d.y * 1e9), d.radius * 1e9) for d in discs],
            facecolor="none", edgecolor=[disc_mark(d.reason).colour for d in discs],
            linewidth=0.8))
        ax.add_collection(PatchCollection(
            [Rectangle(((r.x - r.size / 2) * 1e9, (r.y - r.size / 2) * 1e9), r.size * 1e9,
                       r.size * 1e9) for r in images],
            facecolor=[verdict_mark(r.verdict).colour for r in images], edgecolor="none"))
        if actions:
            ax.scatter([a.x * 1e9 for a in actions], [a.y * 1e9 for a in actions],
                       marker="x", s=22, c="k", linewidths=1.0, zorder=3)
        extents = [(r.x, r.y, r.size / 2) for r in images] + \
                  [(a.x, a.y, a.radius) for a in actions] + [(d.x, d.y, d.radius) for d in discs]
        _zoom_to(ax, extents)
        kept = sum(r.kept for r in images)
        ax.set_title(f"approach area {area}: {len(images)} images,\n{kept} kept, "
                     f"{len(actions)} actions", fontsize=FONT + 1)
        ax.set_xlabel("x (nm)", fontsize=FONT)
        ax.set_ylabel("y (nm)", fontsize=FONT)
        ax.set_aspect("equal")
        ax.tick_params(labelsize=FONT)
    for ax in axes[len(areas):]:
        ax.set_visible(False)
    fig.legend(handles=_map_legend(data), loc="outside right upper", fontsize=FONT,
               frameon=False, title="frames, spots, discs", title_fontsize=FONT)
    return list(axes[: len(areas)])


def _map_legend(data: SessionData) -> list[Artist]:
    """A legend entry for every verdict, disc reason and mark the maps draw (with counts)."""
    verdicts = Counter(r.verdict for r in data.images)
    reasons = Counter(d.reason for d in data.discs)
    handles: list[Artist] = [
        Patch(color=verdict_mark(v).colour, label=f"frame: {verdict_mark(v).label} ({n})")
        for v, n in _in_mark_order(verdicts)]
    handles += [Patch(facecolor="none", edgecolor=disc_mark(r).colour, linewidth=1.2,
                      label=f"{disc_mark(r).label} ({n})") for r, n in reasons.items()]
    if data.actions:
        handles.append(Line2D([], [], marker="x", color="k", linestyle="none",
                              label=f"action spot ({len(data.actions)})"))
    return handles


def _in_mark_order(counts: Counter[str]) -> list[tuple[str, int]]:
    """Verdict counts in the order of the style's legend (unknown verdicts last)."""
    order = [Verdict.KEPT, Verdict.BAD, Verdict.DEBRIS, Verdict.CRASH, Verdict.LOST_CONTACT,
             Verdict.UNSURE, CONDITIONING]
    known = [(str(v), counts[v]) for v in order if counts[v]]
    return known + [(v, n) for v, n in counts.items() if v not in order]


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
    """Three rows over simulated time: what decided kept or bad (the filtered P(tip good)
    against the keep threshold, each image's p(good) beside it), one row per event kind
    (debris, unsure, crashes, area moves, each action by name), the twin's true tip."""
    belief, events, truth = fig.subplots(3, 1, sharex=True, height_ratios=[3, 2, 0.6])
    _draw_belief(belief, data)
    _draw_events(events, data)
    _draw_truth(truth, data)
    for ax in (belief, events, truth):
        ax.tick_params(labelsize=FONT)
    truth.set_xlabel("simulated time (h)", fontsize=FONT)
    truth.set_xlim(0, max(data.hours(data.end_clock), 1e-3))
    return [belief, events, truth]


def _draw_belief(ax: Axes, data: SessionData) -> None:
    """Kept and bad images at the value that decided them, the belief line, the threshold."""
    _shade_episodes(ax, data.episodes, data)
    assessed = [r for r in data.images if not math.isnan(r.p_good)]
    if assessed:
        ax.scatter([data.hours(r.clock) for r in assessed], [r.p_good for r in assessed],
                   s=7, facecolors="none", edgecolors="0.6", linewidths=0.5,
                   label="p(good) of one image (the filter's input)")
    filtered = all(r.tip_belief is not None for r in data.images
                   if r.verdict in (Verdict.KEPT, Verdict.BAD))
    decider = "P(tip good), filtered" if filtered else "p(good)"
    believed = [(data.hours(r.clock), r.tip_belief) for r in data.images
                if r.tip_belief is not None]
    if believed:
        ax.plot(*zip(*believed, strict=True), color="#9467bd", linewidth=0.9,
                label="P(tip good), filtered over the images")
    for verdict in (Verdict.KEPT, Verdict.BAD):
        judged = [r for r in data.images if r.verdict == verdict]
        if judged:
            mark = verdict_mark(verdict)
            ax.scatter([data.hours(r.clock) for r in judged],
                       [r.p_good if r.tip_belief is None else r.tip_belief for r in judged],
                       s=12, c=mark.colour, label=f"{mark.label} ({len(judged)}), at its "
                       f"{decider}", zorder=3)
    keep = data.keep_threshold
    ax.axhline(keep, color="0.2", linestyle="--", linewidth=0.9,
               label=f"keep threshold {keep:g} on {decider}")
    ax.set_ylim(-0.03, 1.03)
    ax.set_ylabel("probability", fontsize=FONT)
    ax.set_title(f"What decided kept or bad: the {decider} against {keep:g}"
                 + (" (not one image's p(good))" if filtered else ""), fontsize=FONT + 1)
    ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=FONT, frameon=False)


def _shade_episodes(ax: Axes, episodes: Sequence[ConditioningEpisode],
                    data: SessionData) -> None:
    """Conditioning episodes as shaded spans (blue: ended with a good tip), in the legend."""
    for outcome, colour, label in ((True, "#1f77b4", "conditioning episode, ended good"),
                                   (False, "0.5", "conditioning episode, ended not good")):
        spans = [e for e in episodes if e.success == outcome]
        for i, episode in enumerate(spans):
            ax.axvspan(data.hours(episode.start), data.hours(episode.end), color=colour,
                       alpha=0.15, linewidth=0,
                       label=f"{label} ({len(spans)})" if i == 0 else None)


def _event_rows(data: SessionData) -> list[tuple[str, str, list[float]]]:
    """(row label, colour, times in h) for every kind of event the session had."""
    rows: list[tuple[str, str, list[float]]] = []
    for verdict in EVENT_VERDICTS:
        times = [data.hours(r.clock) for r in data.images if r.verdict == verdict]
        if times:
            rows.append((verdict_mark(verdict).label, verdict_mark(verdict).colour, times))
    if data.crashes:
        rows.append(("crash", verdict_mark(Verdict.CRASH).colour,
                     [data.hours(c) for c in data.crashes]))
    if data.area_moves:
        rows.append(("area move", "#17becf", [data.hours(c) for c in data.area_moves]))
    for name in sorted({a.name for a in data.actions}):
        rows.append((f"action {name}", "#1f77b4",
                     [data.hours(a.clock) for a in data.actions if a.name == name]))
    return rows


def _draw_events(ax: Axes, data: SessionData) -> None:
    """One row per kind of event, named (with its count) on the axis."""
    rows = _event_rows(data)
    for y, (_, colour, times) in enumerate(rows):
        ax.plot(times, [y] * len(times), "|", color=colour, markersize=9,
                markeredgewidth=1.2)
    _shade_episodes(ax, data.episodes, data)
    ax.set_yticks(range(len(rows)), [f"{label} ({len(times)})"
                                     for label, _, times in rows], fontsize=FONT)
    ax.set_ylim(-0.7, max(len(rows), 1) - 0.3)
    ax.invert_yaxis()
    ax.set_title("Events: rejections that do not depend on the tip, crashes, area moves "
                 "and the actions, by name" if rows else "Events: none", fontsize=FONT + 1)


def _draw_truth(ax: Axes, data: SessionData) -> None:
    """The twin's true tip class as coloured spans (or a note that it was not recorded)."""
    truth = [(data.hours(r.clock), r.truth) for r in data.images if r.truth]
    for start, end, label in _class_spans(truth, data.hours(data.end_clock)):
        ax.axvspan(start, end, color=CLASS_COLOURS.get(label, "0.5"), linewidth=0)
    handles = [Patch(color=CLASS_COLOURS[c], label=c) for c in CLASSES]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.005, 1.3), fontsize=FONT,
              frameon=False, ncols=2)
    ax.set_yticks([])
    ax.set_title("true tip class on the twin" if truth else
                 "true tip class: not recorded (not a twin session)", fontsize=FONT + 1)


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
                     colWidths=[0.78, 0.22])
    table.auto_set_font_size(False)
    table.set_fontsize(FONT)
    table.scale(1, 1.3)
    ax.set_title("yield", fontsize=FONT + 2)
    return ax


def _map_rows(data: SessionData) -> int:
    return math.ceil(max(len(data.areas), 1) / MAP_COLUMNS)


def _map_columns(data: SessionData) -> int:
    return min(max(len(data.areas), 1), MAP_COLUMNS)


def overview_figure(data: SessionData, images: Sequence[StoredImage],
                    episode_images: Sequence[StoredImage] = ()) -> Figure:
    """The whole report as one figure: maps and yield, the timeline, the best ``images``,
    the before and after of the :func:`~.session.shown_episodes` (their frames in
    ``episode_images``)."""
    episodes = shown_episodes(data)
    map_rows, gallery_height = _map_rows(data), 2.9 * gallery_rows(len(images))
    episode_height = 3.0 * episode_rows(len(episodes)) if episodes else 0.0
    heights = [4.4 * map_rows, 6.0, gallery_height] + ([episode_height] if episodes else [])
    fig = Figure(figsize=(16, sum(heights) + 0.6), layout="constrained")
    # Several rows: an array of subfigures (matplotlib types it as either).
    parts = cast(np.ndarray, fig.subfigures(len(heights), 1, height_ratios=heights))
    maps, table = parts[0].subfigures(1, 2, width_ratios=[_map_columns(data) + 1.6, 2.2])
    draw_maps(maps, data)
    draw_yield(table, yield_figures(data))
    draw_timeline(parts[1], data)
    draw_gallery(parts[2], data, images)
    if episodes:
        draw_episodes(parts[3], data, episodes, episode_images)
    fig.suptitle(session_title(data), fontsize=TITLE_FONT)
    return fig


def part_figure(part: FigurePart, data: SessionData,
                images: Sequence[StoredImage] = ()) -> Figure:
    """One part of the report (``map``, ``timeline``, ``gallery`` or ``episodes``) as its
    own figure; ``images`` are the gallery's, or the before and after frames of the
    :func:`~.session.shown_episodes`."""
    if part == "map":
        fig = Figure(figsize=(4 * _map_columns(data) + 3.5, 4.2 * _map_rows(data)),
                     layout="constrained")
        draw_maps(fig, data)
    elif part == "timeline":
        fig = Figure(figsize=(13, 6.5), layout="constrained")
        draw_timeline(fig, data)
    elif part == "gallery":
        fig = Figure(figsize=(12, 3.0 * gallery_rows(len(images)) + 0.4),
                     layout="constrained")
        draw_gallery(fig, data, images)
    elif part == "episodes":
        episodes = shown_episodes(data)
        fig = Figure(figsize=(12, 3.0 * episode_rows(len(episodes)) + 0.4),
                     layout="constrained")
        draw_episodes(fig, data, episodes, images)
    else:
        raise ValueError(f"unknown part {part!r}: map, timeline, gallery or episodes")
    return fig


def png_bytes(fig: Figure, dpi: int = 100) -> bytes:
    """The figure as PNG bytes, rendered with Agg whatever the session's backend."""
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
