"""The assessor's training configuration (torch-free, so the command line loads fast)."""

from __future__ import annotations

from dataclasses import dataclass, field

from spm_bluesky.ml.assessor.augment import Augmentation
from spm_bluesky.ml.assessor.data import Randomisation


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines the weights, besides torch's version and thread count."""

    seed: int = 0
    images: int = 20_000
    validation_images: int = 2_000
    #: Held-out images evaluated for the model card (same set as ``eval assessor --seed 0``).
    eval_images: int = 5_000
    eval_base: int = 0
    epochs: int = 16
    batch_size: int = 128
    learning_rate: float = 3e-3
    weight_decay: float = 5e-4
    threads: int = 2
    #: Processes rendering twin images (no effect on the result).
    workers: int = 2
    randomisation: Randomisation = field(default_factory=Randomisation)
    augmentation: Augmentation = field(default_factory=Augmentation)
