"""Images per second through IOC -> CA -> RunEngine -> TiledWriter -> Tiled, at 64 and
256 px (TimeScale 0), side by side with the same chain fed by an in-process simulated
detector of the same image size.

Run: ``python benchmarks/bench_chain.py [--images N]``. Starts its own IOC (subprocess, private
loopback CA ports) and its own embedded Tiled server in a temporary directory.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from spm_bluesky.services.epics_env import use_private_loopback_ca

use_private_loopback_ca()  # before any CA client starts in this process

from bluesky import RunEngine  # noqa: E402
from bluesky.plans import count  # noqa: E402
from ophyd_async.core import init_devices  # noqa: E402

from spm_bluesky.devices.sim_detector import SoftImageDetector  # noqa: E402
from spm_bluesky.devices.stm import STM  # noqa: E402
from spm_bluesky.plans.acquire import set_frame  # noqa: E402
from spm_bluesky.storage import TiledConfig, start_server, subscribe_writer  # noqa: E402

PREFIX = "BENCH:"
#: DeepSPM's 10 nm frames at both pixel counts (the twin renders a 10 nm frame in ~1-4 ms).
FRAME_SIZE = 10e-9


def start_ioc() -> subprocess.Popen:
    """The real IOC on this process's CA port; returns once it prints its ready line."""
    process = subprocess.Popen(
        [sys.executable, "-m", "spm_bluesky.ioc", "--prefix", PREFIX, "--seed", "0",
         "--port", os.environ["EPICS_CA_SERVER_PORT"]],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[1])
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("spm-ioc ready"):
            return process
    raise RuntimeError("the IOC did not start")


def rate(RE: RunEngine, detector, images: int) -> float:
    """Images per second for one ``count`` run of ``images`` frames (whole run, stop included)."""
    start = time.perf_counter()
    RE(count([detector], num=images))
    return images / (time.perf_counter() - start)


def stm_alone_rate(images: int, pixels: int) -> tuple[STM, float]:
    """The STM device at a 10 nm frame of ``pixels`` px, and its images per second through a
    bare RunEngine (no subscriber): the baseline the durable and bus chains are compared to."""
    bare = RunEngine()
    with init_devices():
        stm = STM(PREFIX, name="stm")
    bare(set_frame(stm, 0.0, 0.0, FRAME_SIZE, pixels))
    bare(count([stm.scan], num=5))  # warm up
    return stm, rate(bare, stm.scan, images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=200)
    args = parser.parse_args()
    ioc = start_ioc()
    try:
        with tempfile.TemporaryDirectory() as tmp, start_server(TiledConfig(Path(tmp))) as server:
            RE = RunEngine()
            subscribe_writer(RE, server.client())
            with init_devices():
                stm = STM(PREFIX, name="stm")
            print("| pixels | IOC chain (images/s) | simulated detector chain (images/s) | ratio |")
            print("|---|---|---|---|")
            for pixels in (64, 256):
                RE(set_frame(stm, 0.0, 0.0, FRAME_SIZE, pixels))
                with init_devices():
                    sim = SoftImageDetector(name="sim", pixels=pixels)
                rate(RE, stm.scan, 5)  # warm up both paths
                rate(RE, sim, 5)
                ioc_rate = rate(RE, stm.scan, args.images)
                sim_rate = rate(RE, sim, args.images)
                print(f"| {pixels} | {ioc_rate:.1f} | {sim_rate:.1f} | {ioc_rate / sim_rate:.2f} |")
    finally:
        ioc.terminate()
        ioc.wait(10)


if __name__ == "__main__":
    main()
