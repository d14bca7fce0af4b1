"""The assessor's network: a small VGG-style CNN with a five-class head and a temperature.

DeepSPM's VGG (four blocks of three convolutions up to 512 channels, two 1024-wide dense
layers) costs tens of milliseconds per image on a CPU. This one keeps the idea (3x3
convolutions, batch norm, max pooling) at a width that answers in about a millisecond:

- a lossless 2x2 space-to-depth step (``PixelUnshuffle``): 1 x 64 x 64 becomes 4 x 32 x 32,
  so no convolution runs at full resolution, yet every pixel and scan line is seen;
- two convolutions at 32 px (32 channels), two at 16 px (64), one at 8 px (128);
- global average and max pooling (a streak or a ghost anywhere in the window counts),
  dropout and one linear layer to the five classes. About 140 k parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from spm_bluesky.protocols import CLASSES

#: Convolutions per scale after the space-to-depth step (channels of each).
STAGES: tuple[tuple[int, ...], ...] = ((32, 32), (64, 64), (128,))
DROPOUT = 0.2


def _conv(channels_in: int, channels_out: int) -> list[nn.Module]:
    return [nn.Conv2d(channels_in, channels_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels_out), nn.ReLU(inplace=True)]


class TipNet(nn.Module):
    """(n, 1, 64, 64) network inputs -> (n, 5) logits.

    The calibration temperature (fitted after training) is a buffer, so it travels in the
    state_dict with the weights.
    """

    def __init__(self, stages: tuple[tuple[int, ...], ...] = STAGES,
                 classes: int = len(CLASSES)) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.PixelUnshuffle(2)]
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Uncalibrated logits of each window."""
        features = self.features(x)
        pooled = torch.cat([features.mean(dim=(2, 3)), features.amax(dim=(2, 3))], dim=1)
        return self.head(self.dropout(pooled))
