"""Tiled storage costs: time from the stop document until a run is readable, cost per event.

A real embedded Tiled server (subprocess, SQLite, loopback) and a real RunEngine with the
in-process soft-signal image detector of the tests (no IOC), so only storage is measured.

- Latency: ``count([det], 1)`` runs; a callback subscribed before the writer stamps the stop
  document; then, from the same process, the run is looked up by uid until its stop document
  and its image are readable. Median over the runs, for each writer setting.
- Cost per event: ``count([det], N)`` with each writer setting minus the same plan without a
  writer, divided by N, at 64 and 256 px.

Run from the repository root: ``python -m benchmarks.bench_storage`` (about a minute).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import bluesky.plans as bp
import psutil
from bluesky import RunEngine
from ophyd_async.core import init_devices

from spm_bluesky.devices.sim_detector import SoftImageDetector
from spm_bluesky.storage import (
    TiledConfig,
    make_writer,
    read_image_stream,
    start_server,
)

#: writer settings: name -> make_writer keyword arguments (backup directory filled in later)
SETTINGS: dict[str, dict[str, Any]] = {
    "batch 1 (default)": {"batch_size": 1},
    "batch 1 + backup dir": {"batch_size": 1, "backup_directory": True},
    "batch 10000 (library)": {"batch_size": 10_000},
}


def make(client: Any, setting: dict[str, Any], backup: str) -> Callable[[str, dict], None]:
    kwargs = dict(setting)
    if kwargs.pop("backup_directory", False):
        kwargs["backup_directory"] = backup
    return make_writer(client, **kwargs)


def run_plan(RE: RunEngine, det: SoftImageDetector, n: int, writer: Callable | None) -> float:
    """Seconds for ``count([det], n)`` with ``writer`` subscribed (or none)."""
    token = RE.subscribe(writer) if writer else None
    start = time.perf_counter()
    RE(bp.count([det], num=n))
    elapsed = time.perf_counter() - start
    if token is not None:
        RE.unsubscribe(token)
    return elapsed


def latency(RE: RunEngine, det: SoftImageDetector, client: Any, writer: Callable, runs: int):
    """Median seconds from the stop document to: writer done, run found with its stop
    document by uid, and its images read."""
    stamps: dict[str, float] = {}

    def stamp(name: str, doc: dict) -> None:
        if name == "stop":
            stamps["stop"] = time.perf_counter()

    t_stamp = RE.subscribe(stamp)  # before the writer: called first
    t_writer = RE.subscribe(writer)
    done, found, read = [], [], []
    for _ in range(runs):
        (uid,) = RE(bp.count([det], num=1))
        done.append(time.perf_counter() - stamps["stop"])
        while "stop" not in (run := client[uid]).metadata:
            time.sleep(0.001)
        found.append(time.perf_counter() - stamps["stop"])
        assert read_image_stream(run, det.image.name).images.shape[0] == 1
        read.append(time.perf_counter() - stamps["stop"])
    RE.unsubscribe(t_writer)
    RE.unsubscribe(t_stamp)
    return [statistics.median(x) for x in (done, found, read)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="runs for the latency median")
    parser.add_argument("--events", type=int, default=40, help="events per cost measurement")
    args = parser.parse_args()

    print(f"machine: {platform.node()}, {platform.processor() or platform.machine()}, "
          f"{psutil.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; "
          f"python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp, start_server(TiledConfig(tmp)) as server:
        client = server.client()
        RE = RunEngine({})
        dets = {}
        with init_devices():
            for pixels in (64, 256):
                dets[pixels] = SoftImageDetector(name=f"det{pixels}", pixels=pixels)
        backup = os.path.join(tmp, "backup")

        print("\nTime from the stop document until the run is readable from Tiled "
              f"(64 px, 1 event per run, median of {args.runs} runs)")
        print("| writer setting | writer done (ms) | run + stop doc found by uid (ms) "
              "| image read (ms) |")
        print("|---|---:|---:|---:|")
        for name, setting in SETTINGS.items():
            writer = make(client, setting, backup)
            run_plan(RE, dets[64], 1, writer)  # warm up
            done, found, read = latency(RE, dets[64], client, writer, args.runs)
            print(f"| {name} | {done * 1e3:.0f} | {found * 1e3:.0f} | {read * 1e3:.0f} |")

        print(f"\nCost per event of the Tiled writer ({args.events} events per run, "
              "minus the same run without a writer)")
        print("| pixels | no writer (ms/event) | " + " | ".join(SETTINGS) + " |")
        print("|---:|---:|" + "---:|" * len(SETTINGS))
        for pixels, det in dets.items():
            run_plan(RE, det, 2, None)  # warm up
            base = run_plan(RE, det, args.events, None) / args.events
            costs = []
            for setting in SETTINGS.values():
                writer = make(client, setting, backup)
                per_event = run_plan(RE, det, args.events, writer) / args.events
                costs.append(f"+{(per_event - base) * 1e3:.1f}")
            print(f"| {pixels} | {base * 1e3:.2f} | " + " | ".join(costs) + " |")


if __name__ == "__main__":
    main()
