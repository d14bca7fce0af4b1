"""An in-process 2-D image detector made of soft signals: a stand-in for the IOC.

Used to test storage without the instrument and to measure what the IOC and Channel Access
add to the acquisition chain (``benchmarks/bench_chain.py``).
"""

from __future__ import annotations

import numpy as np
from ophyd_async.core import (
    AsyncStatus,
    StandardReadable,
    StandardReadableFormat,
    soft_signal_r_and_setter,
    soft_signal_rw,
)


class SoftImageDetector(StandardReadable):
    """Each trigger makes a new seeded float32 image (metres) of ``pixels x pixels``."""

    def __init__(self, name: str = "", pixels: int = 64, seed: int = 0) -> None:
        self._rng = np.random.default_rng(seed)
        self._pixels = pixels
        blank = np.zeros((pixels, pixels), dtype=np.float32)
        with self.add_children_as_readables():
            self.image, self._set_image = soft_signal_r_and_setter(np.ndarray, blank, units="m")
            self.frame, self._set_frame = soft_signal_r_and_setter(int, 0)
        with self.add_children_as_readables(StandardReadableFormat.CONFIG_SIGNAL):
            self.bias = soft_signal_rw(float, 0.5, units="V")
        super().__init__(name=name)

    @AsyncStatus.wrap
    async def trigger(self) -> None:
        """Make the next image."""
        image = self._rng.normal(0.0, 1e-10, (self._pixels, self._pixels)).astype(np.float32)
        self._set_image(image)
        self._set_frame(await self.frame.get_value() + 1)
