"""The one shape every STM file reader returns: a :class:`ScanFile` of :class:`ScanImage` s.

Conventions, the same for every format so that a file read from one format and written to
another keeps its meaning:

- lengths in metres, bias in volts, angles in degrees (counter-clockwise, as the vendors
  write them), the setpoint in the unit that :attr:`ScanFile.setpoint_unit` names;
- ``data[0]`` is the line at the lowest y of the scan frame and ``data[:, 0]`` the leftmost
  column, for forward and backward images alike (plot with ``origin="lower"``);
- every array is ``float32``, the precision the instruments record.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

Direction = Literal["forward", "backward"]
DIRECTIONS: tuple[Direction, Direction] = ("forward", "backward")


class ScanFormatError(ValueError):
    """A file that cannot be read as the format it claims; the message is one line."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True)
class ScanImage:
    """One channel in one scan direction."""

    channel: str
    direction: Direction
    unit: str
    data: npt.NDArray[np.float32]

    def __post_init__(self) -> None:
        if self.data.ndim != 2:
            raise ValueError(f"image {self.channel!r} must be 2-D, not {self.data.shape}")
        object.__setattr__(self, "data", np.ascontiguousarray(self.data, dtype=np.float32))
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, not {self.direction!r}")


@dataclass(frozen=True)
class ScanFile:
    """A scan as read from (or about to be written to) an STM file.

    ``header`` keeps the file's own header, key by key, as text: nothing of it is lost, and
    nothing in it is interpreted beyond the scan fields above it.
    """

    images: tuple[ScanImage, ...]
    size_m: tuple[float, float]
    centre_m: tuple[float, float] = (0.0, 0.0)
    angle_deg: float = 0.0
    bias_v: float | None = None
    setpoint: float | None = None
    setpoint_unit: str = "A"
    date: datetime | None = None
    scan_direction: Literal["up", "down"] = "up"
    instrument: str = ""
    format: str = ""
    header: dict[str, str] = field(default_factory=dict)
    source: str | None = None
    sha256: str | None = None

    def __post_init__(self) -> None:
        if not self.images:
            raise ValueError("a scan needs at least one image")
        shapes = {image.data.shape for image in self.images}
        if len(shapes) != 1:
            raise ValueError(f"all images of a scan must have one shape, not {sorted(shapes)}")

    @property
    def pixels(self) -> tuple[int, int]:
        """``(nx, ny)``: pixels per line, lines per frame."""
        ny, nx = self.images[0].data.shape
        return nx, ny

    @property
    def channels(self) -> tuple[str, ...]:
        """Channel names in file order, each once."""
        return tuple(dict.fromkeys(image.channel for image in self.images))

    def image(self, channel: str = "Z", direction: Direction = "forward") -> ScanImage:
        """The image of ``channel`` in ``direction``; ``KeyError`` if the file has none."""
        for image in self.images:
            if image.channel == channel and image.direction == direction:
                return image
        raise KeyError(f"no {direction} image of channel {channel!r} in {self.channels}")

    def scan_metadata(self) -> dict[str, object]:
        """The scan fields as plain JSON-able values (no images, no header)."""
        return {
            "pixels": list(self.pixels),
            "size_m": list(self.size_m),
            "centre_m": list(self.centre_m),
            "angle_deg": self.angle_deg,
            "bias_v": self.bias_v,
            "setpoint": self.setpoint,
            "setpoint_unit": self.setpoint_unit,
            "date": self.date.isoformat() if self.date else None,
            "scan_direction": self.scan_direction,
            "instrument": self.instrument,
            "format": self.format,
            "channels": [
                {"channel": i.channel, "direction": i.direction, "unit": i.unit}
                for i in self.images
            ],
        }

    def replace(self, **changes: object) -> ScanFile:
        """A copy with ``changes`` applied (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def file_sha256(path: str | Path) -> str:
    """The hex sha256 of a file's bytes: how an imported file is recognised again."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
