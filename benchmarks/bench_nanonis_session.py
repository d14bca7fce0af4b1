"""A long autonomous session over the Nanonis simulator against the same over the twin IOC.

For each backend (``twin``, ``nanonis-sim``) in turn: ``spm-bluesky up --backend B --seed
S`` in a fresh data directory, ``spm-bluesky run --hours H --policy heuristic`` (the
command a user runs: profile devices, plans, durable writer, Tiled), then the session's
images are counted in Tiled, and for the simulator its own frame count is read from the
truth channel; ``spm-bluesky down``. Prints one table row per backend: the session's
counts, the images in Tiled, the frames the simulator made, and the wall time.

Run: ``python benchmarks/bench_nanonis_session.py --hours 2`` (a few minutes).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from spm_bluesky.services.launch import UpOptions, down, up
from spm_bluesky.services.nanonis_sim import truth_state
from spm_bluesky.storage import connect, read_image_stream, runs_by_session

IMAGE_KEY = "stm-scan-image"
COUNTS = ("images", "good_images", "episodes", "actions", "crashes", "area_index", "runs",
          "elapsed_hours")


def session(backend: str, seed: int, hours: float, root: Path) -> dict[str, object]:
    """One session on ``backend``; its summary, images in Tiled, simulator frames, wall s."""
    data_dir = root / backend
    state, _ = up(UpOptions(data_dir=data_dir, seed=seed, backend=backend))
    try:
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "spm_bluesky", "run", "--data-dir", str(data_dir),
             "--hours", str(hours), "--policy", "heuristic", "--seed", str(seed)],
            capture_output=True, text=True, check=True)
        wall = time.perf_counter() - start
        line = next(line for line in done.stdout.splitlines() if line.startswith("done: "))
        summary: dict[str, object] = dict(item.split("=", 1) for item in line[6:].split())
        client = connect(state.tiled_uri, state.api_key)
        runs = runs_by_session(client, str(summary["session_uid"])).values()
        summary["in_tiled"] = sum(
            len(read_image_stream(run, IMAGE_KEY).images) for run in runs
            if run.metadata["start"]["plan_name"] in ("autonomous_scan", "condition_tip"))
        truth = truth_state(state.sim_ports[1]) if state.sim_ports else None
        summary["simulator_frames"] = truth["frame_count"] if truth else "-"
        summary["wall_s"] = f"{wall:.0f}"
        return summary
    finally:
        down(data_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=2.0, help="simulated hours")
    parser.add_argument("--seed", type=int, default=0, help="twin seed")
    args = parser.parse_args()
    columns = (*COUNTS, "in_tiled", "simulator_frames", "wall_s")
    print(f"seed {args.seed}, {args.hours:g} simulated hours, heuristic policy")
    print("| backend | " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * len(columns))
    with tempfile.TemporaryDirectory() as root:
        for backend in ("twin", "nanonis-sim"):
            row = session(backend, args.seed, args.hours, Path(root))
            print(f"| {backend} | " + " | ".join(str(row[c]) for c in columns) + " |",
                  flush=True)


if __name__ == "__main__":
    main()
