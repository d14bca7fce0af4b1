"""What the report draws, read back from the matplotlib artists and the HTML page: the title,
a legend entry for every mark, rejections apart, the belief where it decides, named actions,
colour and scale bars on every image, readable fonts, no overlapping titles."""

from __future__ import annotations

import html
import re
from collections import Counter

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.offsetbox import AnchoredOffsetbox
from matplotlib.text import Text

from spm_bluesky.report import (
    ConditioningEpisode,
    ImageRecord,
    SessionData,
    StoredImage,
    best_images,
    draw_image,
    html_page,
    image_figure,
    overview_figure,
    part_figure,
    png_bytes,
    verdict_reason,
    yield_figures,
)
from spm_bluesky.report.figures import FIGURE_PARTS
from spm_bluesky.report.session import CONDITIONING
from spm_bluesky.report.style import FONT, verdict_mark
from spm_bluesky.storage import Disc, StepRecord

KEEP = 0.5
ACTION_NAMES = ("pulse_+4.0V", "dip_1.0nm", "stall")


def frame(rng: np.random.Generator, bump: float = 1e-10) -> np.ndarray:
    """A 64 px frame: a tilted plane, noise and one round molecule (m)."""
    y, x = np.mgrid[:64, :64]
    blob = bump * np.exp(-((x - 30) ** 2 + (y - 34) ** 2) / 20)
    return 2e-11 * x + 1e-11 * y + rng.normal(0, 5e-12, (64, 64)) + blob


@pytest.fixture(scope="module")
def session() -> tuple[SessionData, dict[tuple[str, int], np.ndarray]]:
    """A session with every verdict, three actions by name, a crash, an area move, two
    conditioning episodes and the twin's truth; its frames by (run, event)."""
    rng = np.random.default_rng(3)
    verdicts = (["kept"] * 12 + ["bad"] * 4 + ["debris"] * 3 + ["crash"] + ["lost_contact"]
                + ["unsure"] * 2)
    rng.shuffle(verdicts)
    images, frames = [], {}
    belief = 0.5
    for i, verdict in enumerate(verdicts, 1):
        belief = 0.97 if verdict == "kept" else 0.1 if verdict == "bad" else belief
        record = ImageRecord(
            "scan-run", i, 600.0 * i, area=i // 16, x=(i % 5) * 12e-9, y=(i % 7) * 12e-9,
            size=10e-9, p_good=float(rng.uniform(0.05, 0.9999)), verdict=verdict,
            truth="good" if verdict == "kept" else "blunt", tip_belief=belief,
            peak_to_peak=float(rng.uniform(0.1e-9, 0.25e-9)) if verdict != "debris"
            else 1.4e-9, keep_threshold=KEEP, debris_threshold=0.6e-9,
            unsure_score=300.0 + i if verdict == "unsure" else float("nan"))
        images.append(record)
        frames[(record.run_uid, record.seq_num)] = frame(rng)
    episodes, actions = [], []
    for e, start in enumerate((3000.0, 9000.0)):
        before, after = (ImageRecord(f"episode-{e}", k, start + 100 * k, 0, 0.0, 0.0,
                                     10e-9, p, CONDITIONING) for k, p in ((1, 0.1), (2, 0.95)))
        images += [before, after]
        for record in (before, after):
            frames[(record.run_uid, record.seq_num)] = frame(rng, 3e-10)
        for k, name in enumerate(ACTION_NAMES):
            actions.append(StepRecord(f"episode-{e}", k + 1, name, k, start + 50 + k, 0, 0,
                                      1e-9 * k, 2e-9, 20e-9))
        episodes.append(ConditioningEpisode(start, start + 200, e == 1, before, after))
    images.sort(key=lambda r: r.clock)
    data = SessionData(
        "0123456789abcdef", {"twin_seed": 7, "model_ids": {"assessor": "tipnet-abc",
                                                          "policy": "dqn-agent-def"},
                             "autonomy": {"keep_threshold": KEEP}},
        runs=5, first_time="2026-03-01T09:30:00+00:00", last_time="2026-03-01T12:00:00+00:00",
        images=images, actions=actions, episodes=episodes, crashes=[7000.0],
        area_moves=[9600.0],
        discs=[Disc(0, 0.0, 0.0, 20e-9, "debris"), Disc(0, 30e-9, 0.0, 150e-9, "crash"),
               Disc(1, 0.0, 0.0, 20e-9, "action"), Disc(1, 0.0, 0.0, 5e-9, "lost_contact")])
    data.end_clock = max(r.clock for r in images)
    return data, frames


def stored(frames, records) -> list[StoredImage]:
    return [(r, frames[(r.run_uid, r.seq_num)]) for r in records]


def episode_frames(data, frames) -> list[StoredImage]:
    return stored(frames, [r for e in data.episodes for r in (e.before, e.after)])


@pytest.fixture(scope="module")
def overview(session) -> Figure:
    data, frames = session
    fig = overview_figure(data, stored(frames, best_images(data)),
                          episode_frames(data, frames))
    FigureCanvasAgg(fig).draw()
    return fig


def texts(fig: Figure) -> list[Text]:
    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]


def legend_labels(fig: Figure) -> list[str]:
    legends = fig.findobj(lambda a: a.__class__.__name__ == "Legend")
    return [t.get_text() for legend in legends for t in legend.get_texts()]


def test_the_title_names_date_seed_policy_and_models(session, overview):
    data, _ = session
    title = overview._suptitle.get_text()
    for part in (data.session_uid, "2026-03-01 09:30:00 UTC", "twin seed 7",
                 "policy dqn-agent-def", "assessor tipnet-abc"):
        assert part in title


def test_every_mark_of_the_map_has_a_legend_entry_with_its_count(session):
    data, _ = session
    labels = legend_labels(part_figure("map", data))
    for verdict, count in Counter(r.verdict for r in data.images).items():
        assert f"frame: {verdict_mark(verdict).label} ({count})" in labels
    for reason in ("debris", "crash", "lost contact", "an action's forbidden radius"):
        assert any(label.startswith(f"blocked: {reason} (") for label in labels), reason
    assert f"action spot ({len(data.actions)})" in labels


def test_map_cells_are_coloured_by_verdict_not_one_colour_for_all_rejections(session):
    data, _ = session
    fig = part_figure("map", data)
    colours = {tuple(np.round(c, 3)) for ax in fig.axes for coll in ax.collections
               for c in coll.get_facecolors() if c[3] == 1.0}
    assert len(colours) >= len({r.verdict for r in data.images})


def test_kept_and_bad_images_are_drawn_at_the_belief_that_decided_them(session):
    data, _ = session
    belief_ax = part_figure("timeline", data).axes[0]
    assert "P(tip good), filtered against 0.5" in belief_ax.get_title()
    labels = [t.get_text() for t in belief_ax.get_legend().get_texts()]
    for verdict in ("kept", "bad"):
        judged = [r for r in data.images if r.verdict == verdict]
        label = f"{verdict_mark(verdict).label} ({len(judged)}), at its P(tip good), filtered"
        assert label in labels
        points = next(c for c in belief_ax.collections if c.get_label() == label)
        assert np.allclose(points.get_offsets()[:, 1], [r.tip_belief for r in judged])
    assert any(label.startswith("keep threshold 0.5 on P(tip good)") for label in labels)
    assert any("p(good) of one image" in label for label in labels)


def test_the_timeline_names_every_action_and_every_rejection_on_its_own_row(session):
    data, _ = session
    events_ax = part_figure("timeline", data).axes[1]
    rows = [t.get_text() for t in events_ax.get_yticklabels()]
    for name in ACTION_NAMES:
        count = sum(a.name == name for a in data.actions)
        assert f"action {name} ({count})" in rows
    for verdict in ("debris", "unsure", "lost_contact"):
        count = sum(r.verdict == verdict for r in data.images)
        assert f"{verdict_mark(verdict).label} ({count})" in rows
    assert f"crash ({len(data.crashes)})" in rows and "area move (1)" in rows
    assert len(rows) == len(set(rows))


def test_every_image_has_a_colour_bar_in_angstrom_and_a_scale_bar_in_nm(session, overview):
    data, _ = session
    shown = [im for im in overview.findobj(AxesImage)]
    assert len(shown) == len(best_images(data)) + 2 * len(data.episodes)
    for image in shown:
        assert image.colorbar is not None
        assert image.colorbar.ax.get_ylabel() == "height (Å)"
        bars = [a for a in image.axes.artists if isinstance(a, AnchoredOffsetbox)]
        assert any(re.fullmatch(r"\d+(\.\d+)? nm", t.get_text())
                   for bar in bars for t in bar.findobj(Text))


def test_no_text_is_smaller_than_9_points(overview):
    small = [(t.get_text(), t.get_fontsize()) for t in texts(overview)
             if t.get_fontsize() < FONT]
    assert not small


def test_no_title_overlaps_another_panel(session):
    data, frames = session
    for fig in (overview_figure(data, stored(frames, best_images(data)),
                                episode_frames(data, frames)),
                part_figure("gallery", data, stored(frames, best_images(data))),
                part_figure("episodes", data, episode_frames(data, frames))):
        renderer = FigureCanvasAgg(fig).get_renderer()
        fig.draw(renderer)
        panels = [ax for ax in fig.axes if ax.get_visible() and ax.images]
        for ax in panels:
            title = ax.title.get_window_extent(renderer)
            for other in panels:
                if other is not ax:
                    assert not title.overlaps(other.get_window_extent(renderer)), \
                        ax.get_title()


def test_the_gallery_is_in_time_order_and_says_how_it_was_ranked(session):
    data, frames = session
    fig = part_figure("gallery", data, stored(frames, best_images(data)))
    titles = [ax.get_title() for ax in fig.axes if ax.images]
    hours = [float(t.split(" h,")[0]) for t in titles]
    assert hours == sorted(hours) and len(hours) == len(best_images(data))
    assert all("log-odds" in t for t in titles)
    assert "log-odds" in fig._suptitle.get_text()


def test_the_episodes_show_before_and_after_with_the_outcome(session):
    data, frames = session
    fig = part_figure("episodes", data, episode_frames(data, frames))
    titles = [ax.get_title() for ax in fig.axes if ax.images]
    assert len(titles) == 2 * len(data.episodes)
    assert titles[0].startswith("episode 1 before") and "p(good) 0.10" in titles[0]
    assert titles[1].startswith("after 3 actions: not good")
    assert titles[3].startswith("after 3 actions: good")


def test_draw_image_and_image_figure_for_the_console(session):
    data, frames = session
    record = data.images[0]
    fig = image_figure(record, frames[(record.run_uid, record.seq_num)], title="one image")
    assert fig.get_size_inches()[0] == pytest.approx(3.2)
    ax = next(ax for ax in fig.axes if ax.images)
    assert ax.get_title() == "one image" and ax.images[0].colorbar is not None
    assert png_bytes(fig)[:4] == b"\x89PNG"
    bare = Figure()
    draw_image(bare.subplots(), record, frames[(record.run_uid, record.seq_num)],
               colorbar=False, scalebar=False)
    assert len(bare.axes) == 1 and not bare.axes[0].artists
    assert bare.axes[0].get_title() == f"{record.verdict}, p(good) {record.p_good:.2f}"


def test_the_page_keeps_reasons_apart_and_explains_each_image(session):
    data, frames = session
    gallery = stored(frames, best_images(data))
    parts = {part: png_bytes(part_figure(part, data, episode_frames(data, frames)
                                         if part == "episodes" else gallery))
             for part in FIGURE_PARTS}
    page = html_page(data, parts, [r for r, _ in gallery])
    assert "twin seed 7" in re.search(r'<h1 id="title">([^<]*)<', page).group(1)
    figures = yield_figures(data)
    for key, value in (("rejected_bad_tip", figures.bad_images),
                       ("rejected_debris", figures.debris_images),
                       ("rejected_crash", figures.crash_images),
                       ("rejected_lost_contact", figures.lost_contact_images),
                       ("conditioning_images", figures.conditioning_images)):
        assert re.search(rf'data-key="{key}">{value}<', page), key
    for record, _ in gallery:
        assert html.escape(verdict_reason(record)) in page
    captions = re.search(r'<ol id="episode-captions">(.*?)</ol>', page, re.S).group(1)
    assert captions.count("<li") == len(data.episodes)
    assert all(name in captions for name in ACTION_NAMES)
    assert len(re.findall(r'src="data:image/png;base64,', page)) == len(FIGURE_PARTS)
