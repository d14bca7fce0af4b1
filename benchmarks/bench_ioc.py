"""IOC frames per second end-to-end over Channel Access (libca via aioca), and IOC memory.

One frame, as a client should do it: put ``Scan:Acquire`` = 1 with a callback, wait for
the ``Scan:FrameCounter`` monitor to reach the new count, get ``Scan:Image``. Each case
runs against a fresh IOC subprocess (``python -m spm_bluesky.ioc``, seed 0) on a private
loopback CA setup, with ``Sim:TimeScale`` 0 and the fastest scan speed (so that the tip
degrades little over the simulated hours and the twin's render cost stays that of a fresh
tip). The IOC's RSS (psutil) is sampled at start and every 1,000 frames at 64 px; CPU time
per frame is given for the IOC process and for this client.

Run: ``python benchmarks/bench_ioc.py`` (one to two minutes; ``--frames`` for a shorter run).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
from aioca import caget, camonitor, caput, purge_channel_caches

from spm_bluesky.domain import limits
from spm_bluesky.services.epics_env import use_private_loopback_ca

REPO_ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
PREFIX = "BENCH:"


@dataclass
class Result:
    """One case: frames/s, CPU ms per frame (IOC, client) and RSS samples (frames, bytes)."""

    pixels: int
    frames: int
    rate: float
    ioc_cpu_ms: float
    client_cpu_ms: float
    rss: list[tuple[int, int]]


class Client:
    """Acquires frames from one IOC over aioca."""

    def __init__(self) -> None:
        self.count = 0
        self._changed = asyncio.Event()

    async def connect(self, pixels: int, size: float) -> None:
        """Set up the frame and subscribe to the frame counter."""
        for name, value in (("Sim:TimeScale", 0.0), ("Scan:Speed", limits.SCAN_SPEED.high),
                            ("Scan:Size", size), ("Scan:Pixels", pixels)):
            await caput(PREFIX + name, value, wait=True)
        self.count = await caget(PREFIX + "Scan:FrameCounter")
        self._sub = camonitor(PREFIX + "Scan:FrameCounter", self._on_count)

    def _on_count(self, value: int) -> None:
        self.count = value
        self._changed.set()

    async def frame(self) -> np.ndarray:
        """Acquire one frame and return the image."""
        expected = self.count + 1
        await caput(PREFIX + "Scan:Acquire", 1, wait=True, timeout=30)
        while self.count < expected:
            self._changed.clear()
            await asyncio.wait_for(self._changed.wait(), 10)
        return await caget(PREFIX + "Scan:Image")

    def close(self) -> None:
        self._sub.close()
        purge_channel_caches()


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


async def run_case(pixels: int, size: float, frames: int, memory_every: int) -> Result:
    """Start an IOC, acquire ``frames`` frames after a warm-up, stop the IOC."""
    ioc = subprocess.Popen([sys.executable, "-m", "spm_bluesky.ioc", "--prefix", PREFIX],
                           stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    try:
        assert ioc.stdout is not None
        ready = ioc.stdout.readline().strip()
        if not ready.startswith("spm-ioc ready"):
            raise RuntimeError(f"IOC did not start: {ready!r}")
        ioc_process, me = psutil.Process(ioc.pid), psutil.Process()
        client = Client()
        await client.connect(pixels, size)
        rss = [(0, ioc_process.memory_info().rss)]
        for _ in range(20):  # warm up
            await client.frame()
        start = time.perf_counter(), cpu_seconds(ioc_process), cpu_seconds(me)
        for done in range(1, frames + 1):
            image = await client.frame()
            if done % memory_every == 0:
                rss.append((done, ioc_process.memory_info().rss))
        wall, ioc_cpu, client_cpu = (now - then for now, then in zip(
            (time.perf_counter(), cpu_seconds(ioc_process), cpu_seconds(me)), start,
            strict=True))
        assert image.size == pixels * pixels, image.size
        client.close()
    finally:
        ioc.terminate()
        ioc.wait(10)
    return Result(pixels, frames, frames / wall, ioc_cpu / frames * 1e3,
                  client_cpu / frames * 1e3, rss)


def report(results: list[Result]) -> None:
    """Print the throughput table and the 64 px memory table."""
    print("| pixels | frames | frames/s over CA | IOC CPU ms/frame | client CPU ms/frame |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r.pixels} | {r.frames:,} | {r.rate:,.0f} | {r.ioc_cpu_ms:.2f} | "
              f"{r.client_cpu_ms:.2f} |")
    rss = results[0].rss
    print()
    print(f"| frames at {results[0].pixels} px | IOC RSS (MiB) |")
    print("|---|---|")
    for done, value in rss:
        print(f"| {done:,} | {value / MIB:.1f} |")
    print()
    steady = rss[1] if len(rss) > 2 else rss[0]
    print(f"RSS growth from {steady[0]:,} to {rss[-1][0]:,} frames: "
          f"{(rss[-1][1] - steady[1]) / MIB:+.1f} MiB "
          f"(from start: {(rss[-1][1] - rss[0][1]) / MIB:+.1f} MiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=10_000, help="frames at 64 px")
    parser.add_argument("--frames-256", type=int, default=500, help="frames at 256 px")
    parser.add_argument("--memory-every", type=int, default=1_000,
                        help="sample the IOC's RSS every this many frames")
    args = parser.parse_args()
    use_private_loopback_ca()  # before libca creates its context (first CA call)
    os.environ.setdefault("EPICS_CA_MAX_ARRAY_BYTES", str(16 * MIB))
    cases = ((64, 10e-9, args.frames), (256, 40e-9, args.frames_256))
    report([asyncio.run(run_case(pixels, size, frames, args.memory_every))
            for pixels, size, frames in cases])


if __name__ == "__main__":
    main()
