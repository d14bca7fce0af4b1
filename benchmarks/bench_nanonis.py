"""Frames per second through the IOC's Nanonis backend against the direct twin IOC, side by
side in one run.

Three IOC subprocesses run at once on a private loopback CA setup, each on its own port:
the twin IOC (``python -m spm_bluesky.ioc``), the Nanonis IOC behind the simulator with its
truth channel (what ``spm-bluesky up --backend nanonis-sim`` runs), and the Nanonis IOC
behind the same simulator without the truth channel (what a real controller looks like:
no ``Sim:*``). The simulator (``python -m spm_bluesky.nanonis``) has time scale 0. Seeds
are 0; frames are 64 px, 10 nm, at the fastest scan speed (as in ``bench_ioc.py``).

One frame, as in ``bench_ioc.py``: put ``Scan:Acquire`` = 1 with a callback (aioca), wait
for the ``Scan:FrameCounter`` monitor, get ``Scan:Image``. The cases take turns in rounds
(``--rounds`` of ``--frames`` frames each), so that a change in the machine's load falls on
all of them; the table gives each case's frames/s over all its rounds, the ratio to the
twin IOC, and the CPU per frame of the IOC and of the simulator.

Run: ``python benchmarks/bench_nanonis.py`` (about a minute; ``--frames`` for shorter).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
from aioca import caget, camonitor, caput, purge_channel_caches

from spm_bluesky.domain import limits
from spm_bluesky.services.epics_env import free_port, use_private_loopback_ca

REPO_ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
SIM_READY = re.compile(r"ready host=\S+ port=(\d+) truth_port=(\d+)")


@dataclass
class Case:
    """One IOC under test and what was measured of it."""

    name: str
    prefix: str
    process: subprocess.Popen[str]
    sim: bool
    frames: int = 0
    seconds: float = 0.0
    ioc_cpu: float = 0.0
    sim_cpu: float = 0.0
    rounds: list[float] = field(default_factory=list)


class Client:
    """Acquires frames from one IOC over aioca."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.count = 0
        self._changed = asyncio.Event()

    async def connect(self, pixels: int, size: float, sim: bool) -> None:
        """Set up the frame and subscribe to the frame counter."""
        settings = [("Scan:Speed", limits.SCAN_SPEED.high), ("Scan:Size", size),
                    ("Scan:Pixels", pixels)]
        if sim:
            settings.insert(0, ("Sim:TimeScale", 0.0))
        for name, value in settings:
            await caput(self.prefix + name, value, wait=True, timeout=30)
        self.count = await caget(self.prefix + "Scan:FrameCounter", timeout=30)
        self._sub = camonitor(self.prefix + "Scan:FrameCounter", self._on_count)

    def _on_count(self, value: int) -> None:
        self.count = value
        self._changed.set()

    async def frame(self) -> np.ndarray:
        """Acquire one frame and return the image."""
        expected = self.count + 1
        await caput(self.prefix + "Scan:Acquire", 1, wait=True, timeout=30)
        while self.count < expected:
            self._changed.clear()
            await asyncio.wait_for(self._changed.wait(), 10)
        return await caget(self.prefix + "Scan:Image")

    def close(self) -> None:
        self._sub.close()


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def start_ioc(prefix: str, port: int, *backend: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "spm_bluesky.ioc", "--prefix", prefix,
                             "--port", str(port), *backend], stdout=subprocess.PIPE, text=True,
                            cwd=REPO_ROOT)


def wait_ready(process: subprocess.Popen[str], what: str) -> str:
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    if "ready" not in line:
        raise RuntimeError(f"{what} did not start: {line!r}")
    return line


async def measure(cases: list[Case], sim: psutil.Process, frames: int, rounds: int,
                  pixels: int, size: float) -> None:
    clients = {case.name: Client(case.prefix) for case in cases}
    for case in cases:
        await clients[case.name].connect(pixels, size, case.sim)
        for _ in range(20):  # warm up
            await clients[case.name].frame()
    for _ in range(rounds):
        for case in cases:
            client = clients[case.name]
            ioc = psutil.Process(case.process.pid)
            start = time.perf_counter(), cpu_seconds(ioc), cpu_seconds(sim)
            for _ in range(frames):
                image = await client.frame()
            wall, ioc_cpu, sim_cpu = (now - then for now, then in zip(
                (time.perf_counter(), cpu_seconds(ioc), cpu_seconds(sim)), start, strict=True))
            assert image.size == pixels * pixels, image.size
            case.frames += frames
            case.seconds += wall
            case.ioc_cpu += ioc_cpu
            case.sim_cpu += sim_cpu if case.name != "twin IOC" else 0.0
            case.rounds.append(frames / wall)
    for client in clients.values():
        client.close()
    purge_channel_caches()


def report(cases: list[Case], load: float) -> None:
    twin = cases[0].frames / cases[0].seconds
    print(f"load average before: {load:.1f}")
    print("| IOC | frames | frames/s | ratio to twin IOC | rounds (frames/s) | "
          "IOC CPU ms/frame | simulator CPU ms/frame |")
    print("|---|---:|---:|---:|---|---:|---:|")
    for case in cases:
        rate = case.frames / case.seconds
        rounds = ", ".join(f"{r:.0f}" for r in case.rounds)
        sim = f"{case.sim_cpu / case.frames * 1e3:.2f}" if case.name != "twin IOC" else "-"
        print(f"| {case.name} | {case.frames:,} | {rate:,.0f} | {rate / twin:.2f} | {rounds} | "
              f"{case.ioc_cpu / case.frames * 1e3:.2f} | {sim} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1000, help="frames per case per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the three cases")
    args = parser.parse_args()
    env = use_private_loopback_ca()  # before libca creates its context (first CA call)
    twin_port = int(env["EPICS_CA_SERVER_PORT"])
    ports = [twin_port, free_port(), free_port()]
    os.environ["EPICS_CA_ADDR_LIST"] = " ".join(f"127.0.0.1:{port}" for port in ports)
    os.environ.setdefault("EPICS_CA_MAX_ARRAY_BYTES", str(16 * MIB))

    simulator = subprocess.Popen([sys.executable, "-m", "spm_bluesky.nanonis", "--port", "0"],
                                 stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    processes = [simulator]
    try:
        match = SIM_READY.search(wait_ready(simulator, "the simulator"))
        assert match is not None
        nanonis = ["--backend", "nanonis", "--nanonis", f"127.0.0.1:{match[1]}"]
        cases = [
            Case("twin IOC", "TWIN:", start_ioc("TWIN:", ports[0]), sim=True),
            Case("Nanonis IOC + simulator (nanonis-sim)", "NSIM:",
                 start_ioc("NSIM:", ports[1], *nanonis, "--truth",
                           f"127.0.0.1:{match[2]}"), sim=True),
            Case("Nanonis IOC + simulator, no truth channel", "NAN:",
                 start_ioc("NAN:", ports[2], *nanonis), sim=False),
        ]
        processes += [case.process for case in cases]
        for case in cases:
            wait_ready(case.process, case.name)
        load = os.getloadavg()[0]
        asyncio.run(measure(cases, psutil.Process(simulator.pid), args.frames, args.rounds,
                            64, 10e-9))
        report(cases, load)
    finally:
        for process in reversed(processes):
            process.terminate()
            process.wait(10)


if __name__ == "__main__":
    main()
