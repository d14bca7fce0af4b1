"""Twin images per second, in-process, on one core, at 64, 256 and 1024 px.

Run: ``python benchmarks/bench_twin.py`` (pins itself to one core where the OS allows).
The tip is held fixed (no spontaneous degradation) so the figure is reproducible: once
with a good tip, once with a three-apex tip (each apex renders the surface again).
"""

from __future__ import annotations

import os
import time
from dataclasses import replace

from spm_bluesky.twin import Apex, Frame, Instrument, TipState, TwinConfig
from spm_bluesky.twin.tip import MAIN_APEX

CASES = [(64, 10e-9, 3000), (256, 40e-9, 100), (1024, 160e-9, 5)]
GOOD = TipState(radius=0.25e-9)
THREE_APEX = replace(GOOD, apexes=(MAIN_APEX, Apex(1e-9, 0.3e-9, 0.6), Apex(-0.5e-9, 1e-9, 0.4)))


def images_per_second(tip: TipState, pixels: int, size: float, count: int, seed: int = 0) -> float:
    """Scan ``count`` frames on a raster of fresh places; return frames per wall second."""
    config = TwinConfig()
    config = replace(config, tip=replace(config.tip, mean_degrade_time=float("inf")))
    instrument = Instrument(seed, config)
    instrument.set_tip(tip)
    step = size * 1.1
    per_row = max(int(600e-9 // step), 1)
    origin = -(per_row - 1) * step / 2
    frames = [Frame(center_x=origin + (i % per_row) * step,
                    center_y=origin + (i // per_row % per_row) * step, size=size, pixels=pixels)
              for i in range(count)]
    instrument.scan(frames[0])  # warm caches and imports
    start = time.perf_counter()
    for frame in frames:
        instrument.scan(frame)
    return count / (time.perf_counter() - start)


def main() -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    print("| pixels | frame size | frames | images/s, good tip | images/s, 3-apex tip |")
    print("|---|---|---|---|---|")
    for pixels, size, count in CASES:
        good = images_per_second(GOOD, pixels, size, count)
        multi = images_per_second(THREE_APEX, pixels, size, max(count // 3, 3))
        print(f"| {pixels} | {size * 1e9:.0f} nm | {count} | {good:,.1f} | {multi:,.1f} |")


if __name__ == "__main__":
    main()
