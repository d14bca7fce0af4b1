"""What an assessor answers, and the duck type plans and callbacks rely on (no torch here).

Plans (``spm_bluesky.plans.assess``) and the replay callback accept anything that has
``model_id`` and ``assess(image_m, scan_size_m)``, so they import without torch and work
with any classifier that answers in this form.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

#: The tip classes, in the order of the network's outputs (the twin's ``TipClass`` values).
CLASSES: tuple[str, ...] = ("good", "multi_apex", "blunt", "adsorbate", "unstable")
GOOD = "good"


@dataclass(frozen=True)
class Assessment:
    """The judgement of one image: calibrated class probabilities, p(good), the top label."""

    probabilities: dict[str, float]
    model_id: str

    @property
    def p_good(self) -> float:
        """Calibrated probability that the tip is good."""
        return self.probabilities[GOOD]

    @property
    def label(self) -> str:
        """The most probable class."""
        return max(self.probabilities, key=self.probabilities.__getitem__)

    @staticmethod
    def from_vector(probabilities: np.ndarray, model_id: str) -> Assessment:
        """An assessment from a probability vector in :data:`CLASSES` order."""
        values = np.asarray(probabilities, dtype=np.float64)
        if values.shape != (len(CLASSES),):
            raise ValueError(f"expected {len(CLASSES)} probabilities, got shape {values.shape}")
        return Assessment({c: float(p) for c, p in zip(CLASSES, values, strict=True)}, model_id)


@runtime_checkable
class AssessorLike(Protocol):
    """Anything that judges an image in metres: what plans and the replay callback need."""

    @property
    def model_id(self) -> str:
        """Name and version of the model, recorded with every assessment (provenance)."""
        ...

    def assess(self, image_m: np.ndarray, scan_size_m: float) -> Assessment:
        """Judge one square image of heights in metres whose edge is ``scan_size_m``."""
        ...
