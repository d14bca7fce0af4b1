"""The assessor's network: a small VGG-style CNN with a five-class head and a temperature.

DeepSPM's VGG (four blocks of three convolutions up to 512 channels, two 1024-wide dense
layers) costs tens of milliseconds per image on a CPU. This one keeps the idea (3x3
convolutions, batch norm, max pooling) at a width that answers in about a millisecond:

- optionally (``TipNet(robust=True)``, ``train assessor --scale-free``), a per-window robust
  rescaling (:class:`InputStage`): the prepared window minus its median, divided by half its
  1 to 99 % height range, clipped to +-4, so the network sees shapes, not an absolute height
  scale (a quiet instrument's 0.3 pm streaks and a 2 A molecule layer look alike in scale);
  a weight file says whether it was trained with it;
- a lossless 2x2 space-to-depth step (``PixelUnshuffle``): 1 x 64 x 64 becomes 4 x 32 x 32,
  so no convolution runs at full resolution, yet every pixel and scan line is seen;
- two convolutions at 32 px (32 channels), two at 16 px (64), one at 8 px (128);
- global average and max pooling (a streak or a ghost anywhere in the window counts),
  dropout and one linear layer to the five classes. About 140 k parameters.

The widths can be scaled (``train assessor --width``, :func:`stages_for`); a weight file
needs no record of them, because :meth:`TipNet.from_state_dict` reads them off the
convolutions' shapes (:func:`stages_of`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from spm_bluesky.protocols import CLASSES

#: Quantiles whose half-difference is the window's height scale.
SCALE_QUANTILES = (0.01, 0.99)
#: Smallest scale in input units (0.01 pm): a perfectly flat window stays flat.
MIN_SCALE = 1e-4
#: Rescaled inputs are clipped to this (spikes, steps).
CLIP = 4.0
#: Channels of each convolution, per scale (a stage).
Stages = tuple[tuple[int, ...], ...]
#: Convolutions per scale after the space-to-depth step (channels of each).
STAGES: Stages = ((32, 32), (64, 64), (128,))
DROPOUT = 0.2
#: Index step between two convolutions of one stage in ``features`` (conv, norm, ReLU); a
#: larger step means a pooling layer in between, so a new stage.
_CONV_STEP = 3
#: Where a network's (and the agent's body's) layers are in its state_dict.
_FEATURES = "features."


def stages_for(width: float) -> Stages:
    """:data:`STAGES` with every channel count scaled by ``width`` (1 is the shipped net)."""
    if width <= 0:
        raise ValueError(f"width must be positive, not {width}")
    return tuple(tuple(max(1, round(channels * width)) for channels in stage)
                 for stage in STAGES)


def stages_of(state: Mapping[str, torch.Tensor]) -> Stages:
    """The stages of the network (a TipNet, or the agent's body) whose state is ``state``.

    Read from the convolutions' weights (the only 4-d weights) and their positions: a gap
    of more than one conv-norm-ReLU between two convolutions is a pooling layer. So a weight
    file of any width loads without a separate record of its architecture.
    """
    convolutions = sorted(
        (int(key[len(_FEATURES):].split(".")[0]), int(tensor.shape[0]))
        for key, tensor in state.items()
        if key.startswith(_FEATURES) and key.endswith(".weight") and tensor.dim() == 4)
    if not convolutions:
        raise ValueError(f"no convolution weights under {_FEATURES!r}: not a TipNet state")
    stages: list[list[int]] = []
    previous = -_CONV_STEP - 1
    for index, channels in convolutions:
        if index - previous > _CONV_STEP:
            stages.append([])
        stages[-1].append(channels)
        previous = index
    return tuple(tuple(stage) for stage in stages)


def _conv(channels_in: int, channels_out: int) -> list[nn.Module]:
    return [nn.Conv2d(channels_in, channels_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels_out), nn.ReLU(inplace=True)]


class InputStage(nn.Module):
    """Robust per-window rescaling (when :attr:`robust`), then 2x2 space-to-depth.

    Parameter-free. A rescaling stage holds a ``robust`` buffer, so the choice travels with
    the weights (and into the agent's body, which reuses ``features``): a state_dict with it
    loads as a rescaling stage, one without it (weights trained before the rescaling, or
    without it) as the plain stage, whatever the stage was built as. Without the buffer the
    state_dict is exactly the one of the network before the rescaling existed, so training
    without it still writes bit-identical weight files.
    """

    def __init__(self, robust: bool = False) -> None:
        super().__init__()
        self.unshuffle = nn.PixelUnshuffle(2)
        self.robust = False
        self._set_robust(robust)

    def _set_robust(self, robust: bool) -> None:
        if robust and not self.robust:
            self.register_buffer("robust_on", torch.ones(()))
        elif not robust and self.robust:
            del self._buffers["robust_on"]
        self.robust = robust

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: object,
                              **kwargs: object) -> None:
        self._set_robust(prefix + "robust_on" in state_dict)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, 1, h, w)`` prepared windows -> ``(n, 4, h/2, w/2)``."""
        if self.robust:
            x = rescale(x)
        return self.unshuffle(x)


def rescale(x: torch.Tensor) -> torch.Tensor:
    """Each window minus its median over half its 1 to 99 % range, clipped to +-:data:`CLIP`.

    Quantiles are nearest-rank values by selection (``kthvalue``: several times faster than
    ``torch.quantile`` or a sort at batch 1).
    """
    flat = x.flatten(1)
    last = flat.shape[1] - 1
    low, mid, high = (flat.kthvalue(round(q * last) + 1, dim=1).values
                      for q in (SCALE_QUANTILES[0], 0.5, SCALE_QUANTILES[1]))
    scale = ((high - low) / 2).clamp_min(MIN_SCALE)
    shape = (-1,) + (1,) * (x.dim() - 1)
    return ((x - mid.view(shape)) / scale.view(shape)).clamp(-CLIP, CLIP)


class TipNet(nn.Module):
    """(n, 1, 64, 64) network inputs -> (n, 5) logits.

    The calibration temperature (fitted after training) is a buffer, so it travels in the
    state_dict with the weights.
    """

    def __init__(self, stages: Stages = STAGES,
                 classes: int = len(CLASSES), robust: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = [InputStage(robust)]
        channels = 4
        for index, widths in enumerate(stages):
            if index:
                layers.append(nn.MaxPool2d(2))
            for width in widths:
                layers += _conv(channels, width)
                channels = width
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(DROPOUT)
        self.head = nn.Linear(2 * channels, classes)
        self.register_buffer("temperature", torch.ones(()))

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor]) -> TipNet:
        """A network of the state's own widths (:func:`stages_of`) with its weights loaded."""
        model = cls(stages_of(state))
        model.load_state_dict(state)
        return model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Uncalibrated logits of each window."""
        return self.logits_and_features(x)[0]

    def logits_and_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Uncalibrated logits ``(n, 5)`` and penultimate features ``(n, k)`` (the pooled
        input of :attr:`head`, which the gate and the unsure score read) of each window."""
        features = self.features(x)
        pooled = torch.cat([features.mean(dim=(2, 3)), features.amax(dim=(2, 3))], dim=1)
        return self.head(self.dropout(pooled)), pooled
