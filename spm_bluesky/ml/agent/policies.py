"""The baseline conditioning policies (random, an expert's escalation) and the registry of
policies by name. They answer the :class:`~spm_bluesky.protocols.Policy` protocol."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from spm_bluesky.domain.actions import ACTIONS, ACTIONS_BY_NAME
from spm_bluesky.protocols import Decision

#: An expert's escalation: mild pulses first, then deeper and deeper dips, the strongest
#: pulse last; repeated from the start when it runs out.
ESCALATION: tuple[str, ...] = (
    "pulse_+2.5V", "pulse_+4.0V", "pulse_-2.5V", "pulse_-4.0V",
    "dip_0.8nm", "dip_1.0nm", "dip_1.2nm", "dip_1.8nm", "dip_2.5nm", "dip_5.0nm",
    "pulse_-8.0V",
)


def _check_mask(mask: np.ndarray) -> np.ndarray:
    allowed = np.asarray(mask, dtype=bool)
    if allowed.shape != (len(ACTIONS),) or not allowed.any():
        raise ValueError(f"expected a mask over {len(ACTIONS)} actions with one allowed, "
                         f"got {allowed}")
    return allowed


class RandomPolicy:
    """Uniformly random over the allowed actions."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self._rng = np.random.default_rng(seed)

    def reset(self, seed: int | None = None) -> None:
        """Reseed (same seed, same choices)."""
        if seed is not None:
            self._rng = np.random.default_rng(seed)

    def act(self, observation: dict[str, np.ndarray], mask: np.ndarray) -> Decision:
        """A random allowed action."""
        allowed = np.flatnonzero(_check_mask(mask))
        return Decision(int(self._rng.choice(allowed)))


class HeuristicPolicy:
    """The scripted escalation of :data:`ESCALATION`, skipping what the mask forbids."""

    name = "heuristic"

    def __init__(self, sequence: Sequence[str] = ESCALATION) -> None:
        self._sequence = [ACTIONS.index(ACTIONS_BY_NAME[name]) for name in sequence]
        self._position = 0

    def reset(self, seed: int | None = None) -> None:
        """Start again from the mildest action."""
        self._position = 0

    def act(self, observation: dict[str, np.ndarray], mask: np.ndarray) -> Decision:
        """The next allowed action of the escalation."""
        allowed = _check_mask(mask)
        for offset in range(len(self._sequence)):
            index = self._sequence[(self._position + offset) % len(self._sequence)]
            if allowed[index]:
                self._position += offset + 1
                return Decision(index)
        return Decision(int(np.flatnonzero(allowed)[0]))
