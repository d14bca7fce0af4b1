"""The report's STM images: one stored frame with its colour and scale bars, the gallery of
the best kept images, and the before and after of conditioning episodes.

Every image is plane-subtracted and shown with a robust contrast (quantiles, so a spike or a
speck of debris does not wash out the rest), heights in Å on a colour bar, lengths on a scale
bar in nm. The web console draws its images with the same :func:`draw_image`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure, SubFigure
from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

from spm_bluesky.domain import processing
from spm_bluesky.report.session import (
    ConditioningEpisode,
    ImageRecord,
    SessionData,
    StoredImage,
    best_score,
)
from spm_bluesky.report.style import FONT, TITLE_FONT

#: Colour map of heights and the quantiles its ends are set at.
HEIGHT_CMAP = "afmhot"
CONTRAST_QUANTILES = (0.01, 0.995)
#: Gallery images per row; conditioning episodes per row (two images each).
GALLERY_COLUMNS = 4
EPISODE_COLUMNS = 2


def draw_heights(ax: Axes, heights: np.ndarray, size: float, *, colorbar: bool = True,
                 scalebar: bool = True, title: str | None = None) -> None:
    """A height map (m) of a ``size`` (m) square frame: plane-subtracted, robust contrast,
    colour bar in Å, scale bar in nm, no axis ticks (the scale bar gives the length)."""
    flat = processing.subtract_plane(np.asarray(heights, dtype=np.float64)) * 1e10
    low, high = np.quantile(flat, CONTRAST_QUANTILES)
    side = size * 1e9
    shown = ax.imshow(flat, cmap=HEIGHT_CMAP, origin="lower", extent=(0, side, 0, side),
                      vmin=low, vmax=max(high, low + 1e-6))
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=FONT)
    if scalebar:
        length = scale_length(side)
        bar = AnchoredSizeBar(ax.transData, length, f"{length:g} nm", "lower right",
                              pad=0.2, borderpad=0.3, color="white", frameon=True,
                              size_vertical=side / 80, fontproperties={"size": FONT})
        bar.patch.set(facecolor="black", alpha=0.55, edgecolor="none")
        ax.add_artist(bar)
    if colorbar:
        figure = ax.get_figure()
        assert figure is not None  # an Axes drawn on is always in a figure
        colours = figure.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
        colours.set_label("height (Å)", fontsize=FONT)
        colours.ax.tick_params(labelsize=FONT)


def scale_length(side: float) -> float:
    """A round length (1, 2 or 5 x 10^k) of at most 40 % of ``side`` (any unit)."""
    target = 0.4 * side
    exponent = math.floor(math.log10(target))
    return max(m * 10.0 ** exponent for m in (1, 2, 5) if m * 10.0 ** exponent <= target)


def draw_image(ax: Axes, record: ImageRecord, image: np.ndarray, *, colorbar: bool = True,
               scalebar: bool = True, title: str | None = None) -> None:
    """One stored image of the session (heights in m) with its colour and scale bars.

    ``title`` None gives the image's verdict and p(good); ``""`` draws no title.
    """
    if title is None:
        title = f"{record.verdict}, p(good) {record.p_good:.2f}"
    draw_heights(ax, image, record.size, colorbar=colorbar, scalebar=scalebar, title=title)


def image_figure(record: ImageRecord, image: np.ndarray, *, inches: float = 3.2,
                 title: str | None = None) -> Figure:
    """One stored image as its own ``inches`` wide figure (:func:`draw_image`)."""
    fig = Figure(figsize=(inches, inches * 0.9), layout="constrained")
    draw_image(fig.subplots(), record, image, title=title)
    return fig


def gallery_rows(count: int) -> int:
    """Rows of the gallery of ``count`` images."""
    return max(1, math.ceil(count / GALLERY_COLUMNS))


def draw_gallery(fig: Figure | SubFigure, data: SessionData,
                 images: Sequence[StoredImage]) -> list[Axes]:
    """The given images in time order, each with its time, area, P(tip good), p(good) and
    the true class (twin), with colour and scale bars."""
    ordered = sorted(images, key=lambda stored: stored[0].clock)
    axes = fig.subplots(gallery_rows(len(ordered)), GALLERY_COLUMNS, squeeze=False).ravel()
    for ax, (record, image) in zip(axes, ordered, strict=False):
        draw_image(ax, record, image, title=_gallery_title(data, record))
    for ax in axes[len(ordered):]:
        ax.axis("off")
    if not ordered:
        axes[0].text(0.5, 0.5, "no images", ha="center", va="center", fontsize=FONT)
    fig.suptitle("Best images: the clean kept images the assessor was surest of (highest "
                 "log-odds of p(good)), in time order", fontsize=TITLE_FONT - 1)
    return list(axes[: len(ordered)])


def _gallery_title(data: SessionData, record: ImageRecord) -> str:
    """Time, area and true class; p(good) to four places and its log-odds (the rank)."""
    truth = f", true {record.truth}" if record.truth else ""
    return (f"{data.hours(record.clock):.2f} h, area {record.area}{truth}\n"
            f"p(good) {record.p_good:.4f}, log-odds {best_score(record):.1f}")


def episode_rows(count: int) -> int:
    """Rows of the before/after figure of ``count`` episodes."""
    return max(1, math.ceil(count / EPISODE_COLUMNS))


def draw_episodes(fig: Figure | SubFigure, data: SessionData,
                  episodes: Sequence[ConditioningEpisode],
                  images: Sequence[StoredImage]) -> list[Axes]:
    """Each episode's first image (the tip before) beside its last (the tip after), with
    p(good), the actions between them and how the episode ended."""
    frames = {(record.run_uid, record.seq_num): image for record, image in images}
    axes = fig.subplots(episode_rows(len(episodes)), 2 * EPISODE_COLUMNS,
                        squeeze=False).ravel()
    drawn: list[Axes] = []
    for index, episode in enumerate(episodes):
        before_ax, after_ax = axes[2 * index], axes[2 * index + 1]
        number = data.episodes.index(episode) + 1
        actions = [a for a in data.actions if episode.start <= a.clock <= episode.end]
        for ax, record, title in (
                (before_ax, episode.before,
                 f"episode {number} before, {data.hours(episode.start):.2f} h"),
                (after_ax, episode.after,
                 f"after {len(actions)} action{'s' * (len(actions) != 1)}: "
                 f"{'good' if episode.success else 'not good'}")):
            image = None if record is None else frames.get((record.run_uid, record.seq_num))
            if record is None or image is None:
                ax.axis("off")
                ax.text(0.5, 0.5, f"{title}\n(no image)", ha="center", va="center",
                        fontsize=FONT)
                continue
            draw_image(ax, record, image, title=f"{title}\np(good) {record.p_good:.2f}")
            drawn.append(ax)
    for ax in axes[2 * len(episodes):]:
        ax.axis("off")
    if not episodes:
        axes[0].text(0.5, 0.5, "no conditioning episode", ha="left", va="center",
                     fontsize=FONT)
    shown = (f"{len(episodes)} of {len(data.episodes)}" if len(episodes) < len(data.episodes)
             else f"all {len(data.episodes)}")
    fig.suptitle(f"Conditioning episodes ({shown}): the tip before the first action and "
                 "after the last", fontsize=TITLE_FONT - 1)
    return drawn
