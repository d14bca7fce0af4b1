"""A picture of what the twin makes: one image per tip class, before/after each action."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from spm_bluesky.domain import processing
from spm_bluesky.twin import Frame, Instrument, TipClass
from spm_bluesky.twin.tip import add_defect, good_tip

#: The side of every gallery frame (the twin's default frame: 10 nm, 64 px).
FRAME_SIZE = Frame().size


def _tip_with(instrument: Instrument, defect: TipClass, seed: int):
    rng = np.random.default_rng(seed)
    state = good_tip(rng, instrument.config.tip)
    return state if defect is TipClass.GOOD else add_defect(state, defect, rng,
                                                            instrument.config.tip)


def gallery_images(seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """Titled, plane-subtracted images (m): each tip class, then action before/after pairs."""
    instrument = Instrument(seed)
    spot = _spot(instrument, range(3, 8))
    panels: list[tuple[str, np.ndarray]] = []
    for index, tip_class in enumerate(TipClass):
        instrument.set_tip(_tip_with(instrument, tip_class, seed + index))
        if tip_class is TipClass.UNSTABLE:  # make sure this frame catches a flip
            instrument.set_tip(replace(instrument.tip, instability=0.03))
        panels.append((tip_class.value, instrument.scan(spot)))
    instrument.set_tip(_tip_with(instrument, TipClass.GOOD, seed))
    for label, act in (("pulse -4 V", lambda x, y: instrument.pulse(x, y, -4.0, 0.2)),
                       ("dip 2.5 nm", lambda x, y: instrument.dip(x, y, 2.5e-9))):
        frame = _spot(instrument, range(0, 2), start=40 if label.startswith('dip') else 0)
        before = instrument.scan(frame)
        state = instrument.tip
        act(frame.center_x, frame.center_y)
        instrument.set_tip(state)  # image the damage with the same tip
        panels += [(f"before {label}", before), (f"after {label}", instrument.scan(frame))]
    return [(title, processing.subtract_plane(image)) for title, image in panels]


def _spot(instrument: Instrument, molecules: range, start: int = 0) -> Frame:
    """The first 10 nm frame (on a raster from ``start``) without debris whose molecule
    count lies in ``molecules``."""
    for i in range(start, start + 400):
        frame = Frame(center_x=(i % 20) * 12e-9 - 120e-9, center_y=(i // 20) * 12e-9)
        patch = instrument.sample.patch(0, frame.center_x - 5e-9, frame.center_x + 5e-9,
                                        frame.center_y - 5e-9, frame.center_y + 5e-9)
        if len(patch.centres) in molecules and len(patch.other) == 0:
            return frame
    return Frame()


def render_gallery(out: Path, seed: int = 0) -> Path:
    """Write the gallery PNG and return its path: each panel with a colour bar (Å) and a
    scale bar (nm), laid out so no title runs into the row above."""
    from matplotlib.figure import Figure

    from spm_bluesky.report.figures import draw_heights, png_bytes
    from spm_bluesky.report.style import TITLE_FONT

    panels = gallery_images(seed)
    cols = 5
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(3.2 * cols, 3.1 * rows + 0.5), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[len(panels):]:
        ax.axis("off")
    for ax, (title, image) in zip(axes, panels, strict=False):
        draw_heights(ax, image, FRAME_SIZE, title=title)
    fig.suptitle(f"spm-bluesky twin, seed {seed}: one {FRAME_SIZE * 1e9:.0f} nm frame per tip "
                 "class, then before and after each action (plane-subtracted)",
                 fontsize=TITLE_FONT)
    out = Path(out)
    out.write_bytes(png_bytes(fig, dpi=110))
    return out
