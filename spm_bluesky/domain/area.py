"""The approach-area mask and DeepSPM's spiral-closest choice of the next place to scan.

The approach area (what the piezo reaches without coarse motion) is a grid of square
cells, 10 nm by default, each free or used/forbidden. The next cell minimises
``max(|i|, |j|) + distance(current, cell)`` (both in cells, ``(i, j)`` counted from the
area centre) among free cells within ``max_distance`` of the current position: an outward
spiral that stays close to the tip. The mask is saved as JSON (no pickle) so a session can
pick it up after a restart. Pure numpy; used by plans and the autonomy loop alike.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spm_bluesky.domain import limits

#: Identifies the JSON file format (bump the version when the layout changes).
FILE_FORMAT = "spm-bluesky-area-mask"
FILE_VERSION = 1
#: DeepSPM's cell edge and search radius (m).
CELL_SIZE = 10e-9
MAX_DISTANCE = 500e-9


@dataclass
class AreaMask:
    """Used/forbidden cells of one approach area (``area_index``), plus the tip position.

    ``blocked[row, col]`` is True for a used or forbidden cell; column ``col`` covers
    x around ``(col - (n - 1) / 2) * cell_size`` and row ``row`` the same in y, so the
    middle cell of an odd grid is centred on the area centre. ``position`` is where the
    last frame or action was centred (m), the origin of the next distance.
    """

    area_index: int = 0
    cell_size: float = CELL_SIZE
    area_size: float = limits.APPROACH_AREA_SIZE
    blocked: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=bool))
    position: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        if not self.cell_size > 0 or not self.area_size >= self.cell_size:
            raise ValueError(
                f"cell_size={self.cell_size!r} m must be positive and at most "
                f"area_size={self.area_size!r} m"
            )
        n = round(self.area_size / self.cell_size)
        if self.blocked.size == 0:
            self.blocked = np.zeros((n, n), dtype=bool)
        self.blocked = np.asarray(self.blocked, dtype=bool)
        if self.blocked.shape != (n, n):
            raise ValueError(f"mask shape {self.blocked.shape} does not match a {n} x {n} grid")
        self.position = (float(self.position[0]), float(self.position[1]))

    @property
    def cells(self) -> int:
        """Cells per edge."""
        return self.blocked.shape[0]

    @property
    def free_cells(self) -> int:
        """How many cells are still free."""
        return int((~self.blocked).sum())

    def _offsets(self) -> np.ndarray:
        """Cell-centre coordinates along one axis, in cells from the area centre."""
        return np.arange(self.cells) - (self.cells - 1) / 2

    def cell_center(self, row: int, col: int) -> tuple[float, float]:
        """Centre (x, y) of cell ``[row, col]`` in metres."""
        offsets = self._offsets()
        return float(offsets[col] * self.cell_size), float(offsets[row] * self.cell_size)

    def cell_of(self, x: float, y: float) -> tuple[int, int] | None:
        """``(row, col)`` of the cell holding point (x, y), or None outside the grid."""
        half = self.cells / 2
        col = math.floor(x / self.cell_size + half)
        row = math.floor(y / self.cell_size + half)
        if 0 <= row < self.cells and 0 <= col < self.cells:
            return row, col
        return None

    def is_free(self, x: float, y: float) -> bool:
        """True if the cell holding (x, y) exists and is free."""
        cell = self.cell_of(x, y)
        return cell is not None and not bool(self.blocked[cell])

    def block_disc(self, x: float, y: float, radius: float) -> int:
        """Block every cell that reaches into the disc of ``radius`` around (x, y), and the
        cell holding (x, y).

        A cell is blocked when any of its points lies closer than ``radius`` to the centre,
        not only its centre: a frame fills its cell and an action lands anywhere in a frame,
        so no frame or action spot of a free cell can fall inside a blocked disc (a crash's
        exclusion zone). A disc of half a cell around a cell's centre blocks that cell only.
        Returns how many cells were newly blocked.
        """
        if radius < 0:
            raise ValueError(f"radius={radius!r} m must not be negative")
        offsets = self._offsets() * self.cell_size
        half = self.cell_size / 2
        # Per axis, the distance from the centre to the nearest point of each cell.
        gap_x = np.maximum(np.abs(offsets - x) - half, 0.0)
        gap_y = np.maximum(np.abs(offsets - y) - half, 0.0)
        inside = np.hypot(gap_x[None, :], gap_y[:, None]) < radius
        cell = self.cell_of(x, y)
        if cell is not None:
            inside[cell] = True
        newly = int((inside & ~self.blocked).sum())
        self.blocked |= inside
        return newly

    def next_cell(
        self,
        x: float | None = None,
        y: float | None = None,
        margin: float = 0.0,
        max_distance: float = MAX_DISTANCE,
    ) -> tuple[float, float] | None:
        """Centre (x, y) of the next free cell to visit from (x, y), or None if none is left.

        Minimises ``max(|i|, |j|) + distance`` in cell units among free cells within
        ``max_distance`` (m) of (x, y) (default: :attr:`position`) whose ``margin``-wide
        surroundings (half the frame size) stay inside the usable piezo range
        (``limits.CENTER_HALF_RANGE``). Ties go to the nearer cell, then the lower row and
        column, so the order is reproducible.
        """
        if x is None or y is None:
            x, y = self.position
        offsets = self._offsets()
        centres = offsets * self.cell_size
        fits = np.abs(centres) + margin <= limits.CENTER_HALF_RANGE
        usable = ~self.blocked & fits[None, :] & fits[:, None]
        distance = np.hypot(offsets[None, :] - x / self.cell_size,
                            offsets[:, None] - y / self.cell_size)
        usable &= distance * self.cell_size <= max_distance
        if not usable.any():
            return None
        ring = np.maximum(np.abs(offsets)[None, :], np.abs(offsets)[:, None])
        rows, cols = np.nonzero(usable)
        cost = ring[rows, cols] + distance[rows, cols]
        best = np.lexsort((cols, rows, distance[rows, cols], cost))[0]
        return self.cell_center(int(rows[best]), int(cols[best]))

    # -- persistence --------------------------------------------------------------------

    def to_json(self) -> str:
        """The mask as JSON: one string of 0/1 per row, row 0 (lowest y) first."""
        return json.dumps({
            "format": FILE_FORMAT,
            "version": FILE_VERSION,
            "area_index": self.area_index,
            "cell_size": self.cell_size,
            "area_size": self.area_size,
            "position": list(self.position),
            "rows": ["".join("1" if b else "0" for b in row) for row in self.blocked],
        }, indent=1)

    @classmethod
    def from_json(cls, text: str) -> AreaMask:
        """Parse :meth:`to_json` output; raise ValueError on anything else."""
        data = json.loads(text)
        if data.get("format") != FILE_FORMAT or data.get("version") != FILE_VERSION:
            raise ValueError(
                f"not an area mask of format {FILE_FORMAT} version {FILE_VERSION}: "
                f"format={data.get('format')!r} version={data.get('version')!r}"
            )
        rows = data["rows"]
        if any(set(row) - {"0", "1"} for row in rows):
            raise ValueError("area mask rows must hold only '0' and '1'")
        blocked = np.array([[c == "1" for c in row] for row in rows], dtype=bool)
        return cls(
            area_index=int(data["area_index"]),
            cell_size=float(data["cell_size"]),
            area_size=float(data["area_size"]),
            blocked=blocked.reshape(len(rows), -1),
            position=tuple(data["position"]),
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the mask to ``path`` atomically (a crash leaves the old file intact)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            "w", dir=path.parent, prefix=path.name, suffix=".tmp", delete=False
        ) as tmp:
            tmp.write(self.to_json())
        os.replace(tmp.name, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> AreaMask:
        """Read a mask written by :meth:`save`."""
        return cls.from_json(Path(path).read_text())

    @classmethod
    def load_or_new(
        cls,
        path: str | os.PathLike[str] | None,
        area_index: int,
        position: tuple[float, float] = (0.0, 0.0),
        cell_size: float = CELL_SIZE,
    ) -> AreaMask:
        """The saved mask for ``area_index``, or a fresh one if none is saved for that area.

        A file from another approach area (the tip has moved since) is replaced by a fresh
        mask the next time it is saved; a file with another cell size is refused.
        """
        if path is not None and Path(path).exists():
            mask = cls.load(path)
            if not math.isclose(mask.cell_size, cell_size, rel_tol=1e-9):
                raise ValueError(
                    f"the area mask in {os.fspath(path)!r} has cells of {mask.cell_size!r} m, "
                    f"not {cell_size!r} m"
                )
            if mask.area_index == area_index:
                return mask
        return cls(area_index=area_index, cell_size=cell_size, position=position)
