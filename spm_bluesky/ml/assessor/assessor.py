"""The tip-quality assessor: shipped weights, preprocessing and calibrated probabilities.

>>> from spm_bluesky.ml.assessor import load_assessor
>>> assessor = load_assessor()                    # the shipped pair of networks
>>> a = assessor.assess(image_m, 10e-9)           # heights in metres, 10 nm frame
>>> a.p_good, a.probabilities, a.label

Any square frame of 8 to 1024 px is accepted: :func:`spm_bluesky.domain.processing.prepare` cuts
it into 64 px windows at about DeepSPM's pixel (one window up to 10 nm, four up to 20 nm;
bigger frames are judged on their central 20 nm); the windows' opinions are combined
(:func:`frame_scores`) and calibrated by temperature scaling (:func:`calibrate`).

With a calibration beside the weights (``assessor.unsure.npz``, see
:mod:`spm_bluesky.ml.assessor.unsure`) every assessment also carries an out-of-distribution
score and ``unsure`` when the frame is unlike the twin images the network learnt from.
The shipped assessor is two such networks behind a gate (``gate.npz``,
:mod:`spm_bluesky.ml.assessor.gate`): the twin's specialist (``assessor.pt``, also
:func:`load_network`'s default) and a generalist (``generalist.pt``). Both kinds are
:class:`FrameAssessor`; :func:`load_assessor` gives either, by the file's suffix.
"""

from __future__ import annotations

import copy
import io
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from spm_bluesky.domain import processing
from spm_bluesky.ml.assessor.model import TipNet
from spm_bluesky.ml.assessor.unsure import UnsureCalibration, load_calibration
from spm_bluesky.ml.card import GATE, SHIPPED, WEIGHTS, model_id_for
from spm_bluesky.protocols import CLASSES, Assessment

MODEL_NAME = "tipnet"
#: Windows per forward pass (bounds memory on big batches).
CHUNK = 256


def frame_scores(logits: np.ndarray, counts: Sequence[int]) -> np.ndarray:
    """Per-frame scores ``(frames, 5)``: the mean log-softmax of each frame's windows.

    A product of the windows' opinions: a streak or a ghost in one window outweighs the
    others' mild preference for ``good``. Calibration divides these by the temperature.
    """
    logits = np.asarray(logits, dtype=np.float64)
    top = logits.max(axis=1, keepdims=True)
    log_p = logits - top - np.log(np.exp(logits - top).sum(axis=1, keepdims=True))
    bounds = np.cumsum(counts)[:-1]
    return np.stack([part.mean(axis=0) for part in np.split(log_p, bounds)])


def calibrate(scores: np.ndarray, temperature: float) -> np.ndarray:
    """Calibrated probabilities: the softmax of ``scores / temperature``."""
    scaled = np.asarray(scores, dtype=np.float64) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    weights = np.exp(scaled)
    return weights / weights.sum(axis=1, keepdims=True)


def inference_copy(model: TipNet) -> TipNet:
    """An eval-mode copy for fast CPU inference: each batch norm folded into its convolution
    and channels-last memory (same outputs to about 1e-6; about 30 % faster at batch 1)."""
    net = copy.deepcopy(model).eval()
    layers = list(net.features)
    fused: list[nn.Module] = []
    for layer in layers:
        if isinstance(layer, nn.BatchNorm2d) and fused and isinstance(fused[-1], nn.Conv2d):
            fused[-1] = fuse_conv_bn_eval(fused[-1], layer)
        else:
            fused.append(layer)
    net.features = nn.Sequential(*fused)
    # torch's stubs lack Module.to's memory_format keyword (torch accepts it).
    return net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]


def window_logits(model: TipNet, windows: np.ndarray) -> np.ndarray:
    """The network's logits ``(n, 5)`` for prepared windows ``(n, 64, 64)`` (eval mode)."""
    return window_outputs(model, windows)[0]


def window_outputs(model: TipNet, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The network's logits ``(n, 5)`` and penultimate features ``(n, k)`` (the input of
    its last layer, ``head``) for prepared windows ``(n, 64, 64)`` (eval mode)."""
    batch = np.asarray(windows, dtype=np.float32)
    if batch.ndim != 3 or batch.shape[1:] != (processing.NETWORK_PIXELS,) * 2:
        raise ValueError(f"expected prepared windows (n, 64, 64), got shape {batch.shape}")
    if model.training:  # walking the modules to set eval mode costs 0.2 ms a call
        model.eval()
    logits = [np.zeros((0, len(CLASSES)), dtype=np.float32)]
    features = [np.zeros((0, model.head.in_features), dtype=np.float32)]
    with torch.inference_mode():
        for start in range(0, len(batch), CHUNK):
            x = torch.from_numpy(batch[start:start + CHUNK]).unsqueeze(1)
            chunk_logits, chunk_features = model.logits_and_features(
                x.contiguous(memory_format=torch.channels_last))
            logits.append(chunk_logits.numpy())
            features.append(chunk_features.numpy())
    return np.concatenate(logits), np.concatenate(features)


class FrameAssessor(ABC):
    """What every assessor of prepared frames shares: :meth:`assess` and :meth:`assess_batch`
    on top of :meth:`judge` (calibrated probabilities and unsure scores of prepared frames) and
    :meth:`is_unsure`."""

    @property
    @abstractmethod
    def model_id(self) -> str:
        """Recorded with every assessment (provenance)."""

    @abstractmethod
    def judge(self, prepared: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated probabilities ``(frames, 5)`` and unsure scores ``(frames,)`` (NaN
        without a calibration) for prepared frames."""

    @abstractmethod
    def is_unsure(self, scores: np.ndarray) -> np.ndarray:
        """Which unsure scores are over the calibrated threshold."""

    @property
    @abstractmethod
    def abstains(self) -> bool:
        """True if the assessor gives unsure scores (it has an unsure calibration)."""

    def probabilities(self, prepared: Sequence[np.ndarray]) -> np.ndarray:
        """Calibrated probabilities ``(frames, 5)`` for prepared frames (each a
        ``(k, 64, 64)`` stack of windows from :func:`spm_bluesky.domain.processing.prepare`)."""
        return self.judge(prepared)[0]

    def assess(self, image_m: np.ndarray, scan_size_m: float) -> Assessment:
        """Judge one square frame of heights in metres whose edge is ``scan_size_m`` (m).

        Raises ValueError for NaN, a wrong shape, an empty image or a bad scan size.
        """
        return self.assess_batch([image_m], scan_size_m)[0]

    def assess_batch(
        self,
        images: Sequence[np.ndarray] | np.ndarray,
        scan_size_m: float | Sequence[float] | np.ndarray,
    ) -> list[Assessment]:
        """Judge several frames (a ``(n, px, px)`` stack or a list of any sizes) at once.

        ``scan_size_m`` is one edge (m) for all frames or one per frame.
        """
        if isinstance(images, np.ndarray) and images.ndim == 2:
            raise ValueError("assess_batch expects several frames: use assess() for one image, "
                             "or pass a (n, px, px) stack")
        sizes = list(scan_size_m) if isinstance(scan_size_m, Sequence) else scan_size_m
        frames = images if isinstance(images, np.ndarray) else list(images)
        probabilities, scores = self.judge(processing.prepare_batch(frames, sizes))
        return [Assessment.from_vector(p, self.model_id, s, u)
                for p, s, u in zip(probabilities, scores, self.is_unsure(scores), strict=True)]


class TipNetAssessor(FrameAssessor):
    """Judges STM images: calibrated probabilities of the five tip classes.

    Thread use is torch's global setting (``torch.set_num_threads``); torch's default, one
    thread per core, is the fastest at batch 1 too (benchmarks/bench_assessor.py). With an
    :class:`~spm_bluesky.ml.assessor.unsure.UnsureCalibration` every assessment carries its
    unsure score and verdict.
    """

    def __init__(self, model: TipNet, model_id: str,
                 calibration: UnsureCalibration | None = None) -> None:
        self._model = model.eval()
        self._net = inference_copy(self._model)
        self._model_id = model_id
        self.calibration = calibration

    @property
    def model_id(self) -> str:
        """Name and weight-file sha256 prefix, recorded with every assessment."""
        return self._model_id

    @property
    def abstains(self) -> bool:
        """True with an unsure calibration."""
        return self.calibration is not None

    @property
    def temperature(self) -> float:
        """The calibration temperature fitted on the validation split."""
        temperature = self._model.temperature
        assert isinstance(temperature, torch.Tensor)  # a registered buffer
        return float(temperature)

    def window_features(self, prepared: Sequence[np.ndarray]) -> np.ndarray:
        """Penultimate features ``(windows, k)`` of every window of the prepared frames."""
        if len(prepared) == 0:
            return np.zeros((0, self._model.head.in_features))
        return window_outputs(self._net, np.concatenate(prepared))[1]

    def judge(self, prepared: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated probabilities ``(frames, 5)`` and unsure scores ``(frames,)`` (NaN
        without a calibration) for prepared frames, in one forward pass."""
        return self.judge_windows(prepared)[:2]

    def judge_windows(
        self, prepared: Sequence[np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`judge`, and the penultimate features ``(windows, k)`` of every window of
        the frames (in order) from the same forward pass."""
        if len(prepared) == 0:
            return (np.zeros((0, len(CLASSES))), np.zeros(0),
                    np.zeros((0, self._model.head.in_features)))
        counts = [len(p) for p in prepared]
        logits, features = window_outputs(self._net, np.concatenate(prepared))
        probabilities = calibrate(frame_scores(logits, counts), self.temperature)
        if self.calibration is None:
            return probabilities, np.full(len(prepared), np.nan), features
        return probabilities, self.calibration.frame_scores(features, counts), features

    def is_unsure(self, scores: np.ndarray) -> np.ndarray:
        """Which unsure scores are over the calibrated threshold (all False without one)."""
        if self.calibration is None:
            return np.zeros(len(scores), dtype=bool)
        return np.asarray(scores) > self.calibration.threshold


def serialise(model: nn.Module) -> bytes:
    """A network's state_dict as ``torch.save`` bytes, independent of the file name
    (reproducible): the weight file of the assessor and of the agent."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getvalue()


def load_network(path: Path | str | None = None, calibrated: bool = True) -> TipNetAssessor:
    """A :class:`TipNetAssessor` from a weight file (default: the shipped specialist,
    ``assessor.pt``).

    The file is a ``TipNet`` state_dict, read with ``torch.load(weights_only=True)``
    (no arbitrary unpickling); the unsure calibration beside it, if there is one, comes
    with it (ValueError if it was made for other weights), unless ``calibrated`` is False
    (to calibrate anew).
    """
    source = Path(path) if path is not None else WEIGHTS
    if not source.is_file():
        raise FileNotFoundError(f"no assessor weights at {source}: train them with "
                                "'spm-bluesky train assessor'")
    data = source.read_bytes()
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    model = TipNet.from_state_dict(state)
    model_id = model_id_for(MODEL_NAME, data)
    calibration = load_calibration(source, model_id) if calibrated else None
    return TipNetAssessor(model, model_id, calibration)


def load_assessor(path: Path | str | None = None, calibrated: bool = True) -> FrameAssessor:
    """The assessor of a file (default: the shipped gate file, ``gate.npz``): a gate file
    (``.npz``, :mod:`spm_bluesky.ml.assessor.gate`) gives the gated pair of networks, a
    weight file one network (:func:`load_network`)."""
    source = Path(path) if path is not None else GATE
    if source.suffix == ".npz":
        from spm_bluesky.ml.assessor.gate import load_gated

        if not source.is_file():
            raise FileNotFoundError(f"no gate file at {source}: fit one with "
                                    "'spm-bluesky train gate'")
        return load_gated(source, calibrated)
    return load_network(source, calibrated)


def assessor_by_name(name: str) -> FrameAssessor:
    """The assessor named ``name``: ``"shipped"`` (the shipped gate file) or the path of a
    weight file or a gate file. For commands and plans that take the assessor as a string."""
    return load_assessor(None if name == SHIPPED else name)
