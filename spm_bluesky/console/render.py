"""The console's pictures, drawn by the report's own figure code (so both show the same).

An image is :func:`spm_bluesky.report.figures.image_figure` (plane-subtracted, robust
contrast, colour bar in Å, scale bar in nm), titled with its verdict and p(good); the
timeline and the approach-area map are the report's parts. Sizes are chosen for a screen:
a gallery tile is small and drawn at a low resolution, the live image larger.
"""

from __future__ import annotations

from enum import StrEnum

import numpy as np

from spm_bluesky.report import ImageRecord, SessionData, image_figure, part_figure, png_bytes
from spm_bluesky.report.figures import FigurePart


class ImageSize(StrEnum):
    """How large an image is drawn: a gallery tile, or the live view's image."""

    TILE = "tile"
    LARGE = "large"


#: (inches wide, dots per inch) of each size.
IMAGE_GEOMETRY = {ImageSize.TILE: (2.6, 72), ImageSize.LARGE: (4.6, 96)}
#: Dots per inch of the timeline and the map.
PART_DPI = 80


def image_title(record: ImageRecord) -> str:
    """The verdict and the assessment, as the image's title."""
    p_good = "p(good) n/a" if np.isnan(record.p_good) else f"p(good) {record.p_good:.2f}"
    return f"{record.verdict}, {p_good}"


def image_png(record: ImageRecord, image: np.ndarray, size: ImageSize) -> bytes:
    """One stored frame (heights in m) as a PNG with its colour and scale bars."""
    inches, dpi = IMAGE_GEOMETRY[size]
    return png_bytes(image_figure(record, image, inches=inches, title=image_title(record)),
                     dpi=dpi)


def part_png(part: FigurePart, data: SessionData) -> bytes:
    """The report's ``timeline`` or ``map`` of the session as a PNG."""
    return png_bytes(part_figure(part, data), dpi=PART_DPI)
