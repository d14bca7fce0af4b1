"""The Protocols that plans depend on: what an assessor answers and what a policy does.

Plans accept anything that has ``model_id`` and ``assess(image_m, scan_size_m)`` (an
:class:`Assessor`) and anything that acts on an observation (a :class:`Policy`), so they
import without torch and work with any classifier or policy that answers in these forms.
A policy sees what the instrument shows (the observation built by :func:`observation`) and
the action mask, and answers a :class:`Decision`: an index into
:data:`spm_bluesky.domain.actions.ACTIONS` plus, where it has them, one value per action
(the agent's Q-values), so plans can record why an action was taken.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from spm_bluesky.domain.actions import ACTIONS

#: The tip classes, in the order of the network's outputs (the twin's ``TipClass`` values).
CLASSES: tuple[str, ...] = ("good", "multi_apex", "blunt", "adsorbate", "unstable")
GOOD = "good"
#: Actions remembered in the observation.
HISTORY = 2


#: The verdict of an image the assessor is unsure of (too unlike what it learnt from).
UNSURE = "unsure"


@dataclass(frozen=True)
class Assessment:
    """The judgement of one image: calibrated class probabilities, p(good), the top label,
    and how far the image is from what the assessor knows.

    ``unsure_score`` is the assessor's out-of-distribution score (NaN when it has none);
    ``unsure`` is True when the score is over the assessor's calibrated threshold: its
    probabilities are then not to be acted on (``spm_bluesky.ml.assessor.unsure``).
    """

    probabilities: dict[str, float]
    model_id: str
    unsure_score: float = float("nan")
    unsure: bool = False

    @property
    def p_good(self) -> float:
        """Calibrated probability that the tip is good."""
        return self.probabilities[GOOD]

    @property
    def label(self) -> str:
        """The most probable class."""
        return max(self.probabilities, key=self.probabilities.__getitem__)

    @staticmethod
    def from_vector(probabilities: np.ndarray, model_id: str,
                    unsure_score: float = float("nan"), unsure: bool = False) -> Assessment:
        """An assessment from a probability vector in :data:`CLASSES` order."""
        values = np.asarray(probabilities, dtype=np.float64)
        if values.shape != (len(CLASSES),):
            raise ValueError(f"expected {len(CLASSES)} probabilities, got shape {values.shape}")
        return Assessment({c: float(p) for c, p in zip(CLASSES, values, strict=True)}, model_id,
                          float(unsure_score), bool(unsure))


@runtime_checkable
class Assessor(Protocol):
    """Anything that judges an image in metres: what plans and the replay callback need."""

    @property
    def model_id(self) -> str:
        """Name and version of the model, recorded with every assessment (provenance)."""
        ...

    def assess(self, image_m: np.ndarray, scan_size_m: float) -> Assessment:
        """Judge one square image of heights in metres whose edge is ``scan_size_m``."""
        ...


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

    ``network_input`` is :func:`spm_bluesky.domain.processing.prepare` of the last image;
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
