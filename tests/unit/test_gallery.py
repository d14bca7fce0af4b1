"""The gallery command renders every tip class and each action's before/after."""

from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text

from spm_bluesky.commandline.main import main
from spm_bluesky.evaluation.gallery import gallery_images, render_gallery
from spm_bluesky.report import figures
from spm_bluesky.report.style import FONT
from spm_bluesky.twin import TipClass


def test_gallery_panels_show_each_class_and_the_action_damage():
    panels = dict(gallery_images(seed=0))
    for tip_class in TipClass:
        assert panels[tip_class.value].shape == (64, 64)
    for action in ("pulse -4 V", "dip 2.5 nm"):
        change = panels[f"after {action}"] - panels[f"before {action}"]
        centre = np.abs(change[26:38, 26:38]).max()
        assert centre > 0.5e-10, f"{action} left no visible mark"


def test_gallery_command_writes_a_png(tmp_path, capsys):
    out = tmp_path / "gallery.png"
    assert main(["gallery", "--out", str(out), "--seed", "1"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 50_000
    assert "gallery.png" in capsys.readouterr().out


def test_gallery_panels_have_bars_readable_text_and_titles_clear_of_the_row_above(
        tmp_path, monkeypatch):
    drawn: list[Figure] = []
    real_png_bytes = figures.png_bytes

    def keep(fig: Figure, dpi: int = 100) -> bytes:
        drawn.append(fig)
        return real_png_bytes(fig, dpi)

    monkeypatch.setattr(figures, "png_bytes", keep)
    render_gallery(tmp_path / "gallery.png", seed=0)
    (fig,) = drawn
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    panels = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in panels] == [title for title, _ in gallery_images(0)]
    for ax in panels:
        assert ax.images[0].colorbar is not None
        assert any(t.get_text() == "2 nm" for t in ax.findobj(Text))
        title = ax.title.get_window_extent(renderer)
        assert not any(title.overlaps(other.get_window_extent(renderer))
                       for other in panels if other is not ax), ax.get_title()
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    assert min(t.get_fontsize() for t in texts) >= FONT
