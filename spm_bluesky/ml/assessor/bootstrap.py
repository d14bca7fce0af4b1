"""How far a figure on the real set can be trusted: percentile intervals from resampling whole
frames (a cluster bootstrap).

The real set's images are not independent. Several are cut from one recorded frame (168
images come from 69 frames), and their verdicts go together. Resampling single images would
count each crop as separate evidence and give intervals that are too narrow. Resampling whole
frames with replacement, with all their images, does not. Two assessors whose figures lie
within each other's intervals are not told apart by this set, and neither are two training
runs of one recipe (benchmarks/RESULTS.md, fourteenth session).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

#: Resamples drawn for an interval.
RESAMPLES = 2000
#: The interval's coverage: the central 95 % of the resampled figures.
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """The central :attr:`level` of a figure's resampled values, and how many resamples
    defined it (an AUC needs both classes)."""

    low: float
    high: float
    level: float
    resamples: int

    def __str__(self) -> str:
        if math.isnan(self.low):
            return "interval n/a"
        return f"{self.level:.0%} interval {self.low:.3f} to {self.high:.3f}"

    def to_json(self) -> dict[str, float | int | None]:
        """Plain JSON values (NaN as null)."""
        return {"low": None if math.isnan(self.low) else self.low,
                "high": None if math.isnan(self.high) else self.high,
                "level": self.level, "resamples": self.resamples}


def by_group(statistic: Callable[[np.ndarray], float], groups: Sequence[str], *,
             resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0) -> Interval:
    """The percentile interval of ``statistic(indices)`` over resamples of whole groups.

    Each resample draws as many groups as there are, with replacement, and passes the
    indices of all their items (a group drawn twice counts twice). Resamples where the
    statistic is NaN (e.g. an AUC without both classes) are left out, and their number is
    reported. Seeded, so the same call gives the same interval.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, not {level}")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, not {resamples}")
    names, codes = np.unique(np.asarray(groups), return_inverse=True)
    if len(names) == 0:
        return Interval(math.nan, math.nan, level, 0)
    members = [np.flatnonzero(codes == g) for g in range(len(names))]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        drawn = rng.integers(len(members), size=len(members))
        value = statistic(np.concatenate([members[g] for g in drawn]))
        if not math.isnan(value):
            values.append(value)
    if not values:
        return Interval(math.nan, math.nan, level, 0)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return Interval(float(low), float(high), level, len(values))
