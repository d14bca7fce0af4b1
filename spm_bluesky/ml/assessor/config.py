"""The assessor's training configuration (torch-free, so the command line loads fast)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from spm_bluesky.ml.assessor.augment import Augmentation
from spm_bluesky.ml.assessor.data import Randomisation
from spm_bluesky.ml.assessor.synth.config import SynthConfig


class GoodWeightOn(StrEnum):
    """Which frames of the good class ``TrainConfig.good_weight`` weights."""

    #: Every good frame, twin and synthetic.
    ALL = "all"
    #: Only synthetic good frames: the twin's frames keep their own odds, so the network
    #: still tells the twin's double tips from its good ones, while on unfamiliar surfaces
    #: (learnt from the synthetic frames) a clean image is good by default.
    SYNTHETIC = "synthetic"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines the weights, besides the CPU, torch's version and the
    thread count."""

    seed: int = 0
    #: Twin frames (:mod:`spm_bluesky.ml.assessor.data`).
    images: int = 20_000
    validation_images: int = 2_000
    #: Synthetic frames (:mod:`spm_bluesky.ml.assessor.synth`): other surfaces, real-looking
    #: tip defects, instrument noise; and their share of the validation split.
    synth_images: int = 0
    synth_validation_images: int = 0
    #: Synthetic frames of every family held out for the card (held-out seed range).
    synth_eval_images: int = 1_000
    #: The network rescales each window by its own height range, and augmentation adds
    #: heights relative to it (:class:`~spm_bluesky.ml.assessor.model.InputStage`); off for
    #: the shipped weights, which the default command reproduces bit for bit.
    scale_free: bool = False
    #: Loss weight of the good class. The classes come in equal numbers, so with 1 the
    #: prior odds of good against bad are 1 to 4 and an image unlike any seen gets a low
    #: p(good); 4 evens them (a decision at p(good) 0.5 is then good against bad).
    good_weight: float = 1.0
    good_weight_on: GoodWeightOn = GoodWeightOn.ALL
    #: Factor on every layer's channel count (:func:`~spm_bluesky.ml.assessor.model.stages_for`);
    #: 1 is the shipped network. Wider nets learn more families at some latency.
    width: float = 1.0
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
    synth: SynthConfig = field(default_factory=SynthConfig)


@dataclass(frozen=True)
class GateConfig:
    """Everything that determines a gated assessor's gate besides its two networks
    (:mod:`spm_bluesky.ml.assessor.gate_training`)."""

    #: Base of the validation sets the gate is fitted on.
    seed: int = 0
    #: Twin frames and synthetic frames fitted on (each).
    fit_frames: int = 2_000
    #: Frames with p(twin) under this go to the generalist.
    threshold: float = 0.5
    #: Held-out twin frames and synthetic frames measured for the card.
    eval_images: int = 5_000
    synth_eval_images: int = 1_000
    #: Processes rendering twin images (no effect on the result).
    workers: int = 2
