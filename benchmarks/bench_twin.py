"""Twin images per second, in-process, on one core, at 64, 256 and 1024 px.

Run: ``python benchmarks/bench_twin.py`` (pins itself to one core where the OS allows).
"""

from __future__ import annotations

import os
import time

from spm_bluesky.twin import Frame, Instrument

CASES = [(64, 10e-9, 2000), (256, 40e-9, 100), (1024, 160e-9, 6)]


def images_per_second(pixels: int, size: float, count: int, seed: int = 0) -> float:
    """Scan ``count`` frames on a raster of fresh places; return frames per wall second."""
    instrument = Instrument(seed)
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
    print("| pixels | frame size | frames | images/s (one core) |")
    print("|---|---|---|---|")
    for pixels, size, count in CASES:
        rate = images_per_second(pixels, size, count)
        print(f"| {pixels} | {size * 1e9:.0f} nm | {count} | {rate:,.1f} |")


if __name__ == "__main__":
    main()
