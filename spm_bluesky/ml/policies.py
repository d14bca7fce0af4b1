"""Conditioning policies: the Protocol the agent and the baselines share (no torch, no twin).

A policy sees what the instrument shows (the observation built by :func:`observation`) and
the action mask, and answers a :class:`Decision`: an index into
:data:`spm_bluesky.actions.ACTIONS` plus, where it has them, one value per action (the
agent's Q-values), so plans can record why an action was taken. The live plan
(:mod:`spm_bluesky.plans.condition`) and the evaluation harness call policies the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from spm_bluesky.actions import ACTIONS, ACTIONS_BY_NAME

from .assessment import CLASSES

#: Actions remembered in the observation.
HISTORY = 2
#: An expert's escalation: mild pulses first, then deeper and deeper dips, the strongest
#: pulse last; repeated from the start when it runs out.
ESCALATION: tuple[str, ...] = (
    "pulse_+2.5V", "pulse_+4.0V", "pulse_-2.5V", "pulse_-4.0V",
    "dip_0.8nm", "dip_1.0nm", "dip_1.2nm", "dip_1.8nm", "dip_2.5nm", "dip_5.0nm",
    "pulse_-8.0V",
)


@dataclass(frozen=True)
class Decision:
    """The chosen action index and, if the policy has them, its value for every action."""

    action: int
    values: tuple[float, ...] | None = None

    @property
    def name(self) -> str:
        """The chosen action's name."""
        return ACTIONS[self.action].name


@runtime_checkable
class Policy(Protocol):
    """What the evaluation harness and ``condition_tip`` need from a policy."""

    name: str

    def reset(self, seed: int | None = None) -> None:
        """Start a new episode (seeds any randomness of the policy)."""
        ...

    def act(self, observation: dict[str, np.ndarray], mask: np.ndarray) -> Decision:
        """Choose an allowed action for this observation."""
        ...


@runtime_checkable
class LearningPolicy(Policy, Protocol):
    """A policy that learns from the episodes it acts in (DeepSPM's online learning).

    ``condition_tip`` calls :meth:`end_episode` with the last observation once the episode
    is over: ``terminated`` when the tip was declared good, not when the cap was reached.
    """

    def end_episode(self, observation: dict[str, np.ndarray], terminated: bool) -> None:
        """Learn from the episode's last step."""
        ...


def encode_history(history: Sequence[tuple[int, float]], length: int = HISTORY) -> np.ndarray:
    """The last ``length`` (action index, p(good) after it) pairs as a flat float32 vector.

    Most recent first; each entry is a one-hot over ACTIONS followed by p(good); missing
    entries (early in an episode) are zeros.
    """
    width = len(ACTIONS) + 1
    out = np.zeros(length * width, dtype=np.float32)
    for slot, (index, p_good) in enumerate(reversed(list(history)[-length:])):
        out[slot * width + int(index)] = 1.0
        out[slot * width + width - 1] = p_good
    return out


def observation(
    network_input: np.ndarray,
    probabilities: dict[str, float] | np.ndarray,
    history: Sequence[tuple[int, float]],
    mask: Sequence[bool] | np.ndarray,
    length: int = HISTORY,
) -> dict[str, np.ndarray]:
    """The observation dict (as the env returns it) from its parts.

    ``network_input`` is :func:`spm_bluesky.processing.prepare` of the last image;
    ``probabilities`` the assessor's, as a dict or in CLASSES order.
    """
    if isinstance(probabilities, dict):
        probabilities = np.array([probabilities[c] for c in CLASSES])
    return {
        "image": np.asarray(network_input, dtype=np.float32),
        "probabilities": np.asarray(probabilities, dtype=np.float32),
        "history": encode_history(history, length),
        "action_mask": np.asarray(mask, dtype=np.int8),
    }


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
