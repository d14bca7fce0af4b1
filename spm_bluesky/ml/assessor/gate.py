"""Two networks and a gate: the twin's specialist judges images like the twin's, a generalist
judges the rest.

Every single network so far trades the twin against real images (benchmarks/RESULTS.md,
"Assessor training beyond the twin"): the specialist, trained on the twin alone, tells the
twin's double tips from its good tips and calls clean real images bad; a generalist,
trained on synthetic surfaces too, judges real images far better and loses the twin's double
tips. The gate asks which of the two has learnt from images like the one in hand.

The gate is a logistic regression on the specialist's own features of a frame (the mean and
the maximum over its windows of the penultimate features), fitted to tell twin frames from
synthetic ones (:mod:`spm_bluesky.ml.assessor.gate_training`); it never sees a real image.
The specialist judges every frame, in the forward pass that gives the gate its features; a
frame whose p(twin) is under the gate's threshold t is judged again by the generalist, and
its probabilities are the two networks' mixed: p(twin)/t of the specialist's and the rest of
the generalist's. The verdict moves continuously from the specialist's (at the threshold) to
the generalist's (far from the twin), and a twin frame the gate barely sends keeps most of
the specialist's word, which holds the twin's accuracy (benchmarks/RESULTS.md). On the twin's
own images the gated assessor costs what the specialist costs.

Unsure scores are relative: the unsure score of the specialist, or of the generalist for a
frame sent to it, divided by that network's calibrated threshold, so a frame is unsure when
its score is over 1.

A gate file (``.npz``: arrays and a JSON header, read with ``allow_pickle=False``) names its
two weight files, relative to its own folder, with their model ids; loading refuses a gate
whose weight files changed.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spm_bluesky.ml.assessor.assessor import FrameAssessor, TipNetAssessor, load_network
from spm_bluesky.ml.card import model_id_for

MODEL_NAME = "gated"
#: A gate file's suffix: how :func:`~spm_bluesky.ml.assessor.assessor.load_assessor` tells
#: a gate from a weight file (``.pt``).
SUFFIX = ".npz"
#: Ridge on the logistic regression's weights (on standardised features).
L2 = 1e-3


def frame_features(window_features: np.ndarray, counts: Sequence[int]) -> np.ndarray:
    """Per frame (``counts`` windows each, in order), the mean and the maximum over its
    windows of the penultimate features: ``(frames, 2k)``."""
    parts = np.split(np.asarray(window_features, dtype=np.float64), np.cumsum(counts)[:-1])
    return np.stack([np.r_[p.mean(axis=0), p.max(axis=0)] for p in parts])


def gate_features(specialist: TipNetAssessor, prepared: Sequence[np.ndarray]) -> np.ndarray:
    """The gate's input for prepared frames: the specialist's :func:`frame_features`."""
    return frame_features(specialist.judge_windows(prepared)[2], [len(p) for p in prepared])


@dataclass(frozen=True)
class LogisticGate:
    """p(twin | frame features): standardisation, then a logistic regression."""

    mean: np.ndarray
    scale: np.ndarray
    weight: np.ndarray
    bias: float

    def p_twin(self, features: np.ndarray) -> np.ndarray:
        """p(twin) of each row of ``features``."""
        z = ((np.asarray(features, dtype=np.float64) - self.mean) / self.scale) @ self.weight
        return np.asarray(1.0 / (1.0 + np.exp(-(z + self.bias))))


def mix(specialist: np.ndarray, generalist: np.ndarray, p_twin: np.ndarray,
        threshold: float) -> np.ndarray:
    """The gated verdict of frames sent to the generalist (p(twin) under ``threshold``):
    p(twin)/threshold of the specialist's probabilities and the rest of the generalist's."""
    kept = (np.asarray(p_twin) / threshold)[:, None]  # the specialist's share
    return kept * specialist + (1.0 - kept) * generalist


def fit_logistic(twin: np.ndarray, other: np.ndarray, l2: float = L2) -> LogisticGate:
    """The logistic regression telling ``twin`` rows from ``other`` rows, fitted by L-BFGS
    from zero weights (deterministic), with a ridge of ``l2`` on standardised features."""
    x = np.r_[np.asarray(twin, np.float64), np.asarray(other, np.float64)]
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    inputs = torch.from_numpy((x - mean) / scale)
    target = torch.from_numpy(np.r_[np.ones(len(twin)), np.zeros(len(other))])
    weight = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([weight, bias], max_iter=1000, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(inputs @ weight + bias,
                                                                     target)
                + l2 * (weight * weight).sum())
        loss.backward()
        return loss

    optimiser.step(closure)
    return LogisticGate(mean, scale, weight.detach().numpy().copy(), float(bias.detach()))


@dataclass(frozen=True)
class GateFile:
    """What a gate file holds: its two weight files (relative to its folder) with their
    model ids, the logistic gate and its threshold, and how it was fitted."""

    specialist: str
    specialist_id: str
    generalist: str
    generalist_id: str
    gate: LogisticGate
    threshold: float
    fit: dict[str, Any]

    def save(self, path: Path | str) -> bytes:
        """Write the gate file; return its bytes (the gated assessor's id hashes them)."""
        header = {"kind": MODEL_NAME, "specialist": self.specialist,
                  "specialist_id": self.specialist_id, "generalist": self.generalist,
                  "generalist_id": self.generalist_id, "bias": self.gate.bias,
                  "threshold": self.threshold, "fit": self.fit}
        path = Path(path)
        with path.open("wb") as handle:
            np.savez(handle, mean=self.gate.mean, scale=self.gate.scale,
                     weight=self.gate.weight, header=np.array(json.dumps(header)))
        return path.read_bytes()

    @classmethod
    def read(cls, path: Path | str) -> GateFile:
        """Read a gate file (no pickles); ValueError if it is not one."""
        try:
            with np.load(path, allow_pickle=False) as stored:
                header = json.loads(str(stored["header"]))
                arrays = {k: stored[k].astype(np.float64) for k in ("mean", "scale", "weight")}
        except (KeyError, ValueError, OSError) as err:
            raise ValueError(f"{path} is not a gate file ({err})") from None
        if header.get("kind") != MODEL_NAME:
            raise ValueError(f"{path} is not a gate file (kind {header.get('kind')!r})")
        return cls(header["specialist"], header["specialist_id"], header["generalist"],
                   header["generalist_id"],
                   LogisticGate(arrays["mean"], arrays["scale"], arrays["weight"],
                                float(header["bias"])),
                   float(header["threshold"]), header["fit"])


def network_weights(path: Path | str) -> Path:
    """The weight file whose body a network built on ``path`` starts from: ``path`` itself,
    or for a gate file the specialist it names (the network that judges every frame)."""
    path = Path(path)
    if path.suffix != SUFFIX:
        return path
    return path.parent / GateFile.read(path).specialist


def relative_path(target: Path | str, gate_path: Path | str) -> str:
    """``target`` as the gate file at ``gate_path`` records it: relative to its folder."""
    return os.path.relpath(Path(target).resolve(), Path(gate_path).resolve().parent)


class GatedAssessor(FrameAssessor):
    """The specialist for frames like the twin's, the generalist (mixed with the specialist
    by p(twin)) for the rest."""

    def __init__(self, specialist: TipNetAssessor, generalist: TipNetAssessor,
                 gate: LogisticGate, threshold: float, model_id: str) -> None:
        self.specialist = specialist
        self.generalist = generalist
        self.gate = gate
        self.threshold = threshold
        self._model_id = model_id

    @property
    def model_id(self) -> str:
        """``gated-`` and the gate file's sha256 prefix (the file names both networks)."""
        return self._model_id

    @property
    def abstains(self) -> bool:
        """True if both networks have an unsure calibration."""
        return self.specialist.abstains and self.generalist.abstains

    def judge(self, prepared: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated probabilities ``(frames, 5)`` and relative unsure scores (NaN without
        calibrations)."""
        return self.judge_routes(prepared)[:2]

    def judge_routes(
        self, prepared: Sequence[np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`judge`, and which frames went to the generalist."""
        probabilities, scores, features = self.specialist.judge_windows(prepared)
        relative = scores / _threshold(self.specialist)
        p_twin = self.gate.p_twin(frame_features(features, [len(p) for p in prepared]))
        routed = p_twin < self.threshold
        if routed.any():
            chosen = np.flatnonzero(routed)
            general, general_scores = self.generalist.judge([prepared[int(i)] for i in chosen])
            probabilities[chosen] = mix(probabilities[chosen], general, p_twin[chosen],
                                        self.threshold)
            relative[chosen] = general_scores / _threshold(self.generalist)
        return probabilities, relative, routed

    def routes(self, prepared: Sequence[np.ndarray]) -> np.ndarray:
        """Which frames the gate sends to the generalist (the specialist's pass only; the
        generalist does not run)."""
        return self.gate.p_twin(gate_features(self.specialist, prepared)) < self.threshold

    def is_unsure(self, scores: np.ndarray) -> np.ndarray:
        """Which relative unsure scores are over 1 (all False without calibrations)."""
        if not self.abstains:
            return np.zeros(len(scores), dtype=bool)
        return np.asarray(scores) > 1.0


def _threshold(network: TipNetAssessor) -> float:
    return network.calibration.threshold if network.calibration is not None else math.nan


def load_gated(path: Path | str, calibrated: bool = True) -> GatedAssessor:
    """The gated assessor of a gate file: its two weight files are loaded (with their unsure
    calibrations unless ``calibrated`` is False) and must have the model ids the gate was
    fitted with (ValueError otherwise: fit the gate again)."""
    path = Path(path)
    gate_file = GateFile.read(path)
    networks = []
    for name, expected in ((gate_file.specialist, gate_file.specialist_id),
                           (gate_file.generalist, gate_file.generalist_id)):
        network = load_network(path.parent / name, calibrated)
        if network.model_id != expected:
            raise ValueError(f"{path} was fitted for {expected}, but {path.parent / name} is "
                             f"{network.model_id}: fit the gate again (spm-bluesky train gate)")
        networks.append(network)
    return GatedAssessor(networks[0], networks[1], gate_file.gate, gate_file.threshold,
                         model_id_for(MODEL_NAME, path.read_bytes()))
