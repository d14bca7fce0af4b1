"""Assessor speed on the CPU: latency at batch 1 and throughput at batch 64, plus weight size.

Run: ``python benchmarks/bench_assessor.py [--weights PATH] [--repeats N]`` (default: the
shipped gate file). "network" is the forward pass on prepared 64 px inputs, plus the softmax
and calibration (the issue's figure); "end to end" is ``assessor.assess`` on a 10 nm, 64 px
twin frame in metres (checks, plane fit, normalisation, network, and for a gated assessor
the gate), and on a 20 nm, 128 px frame (four windows). For a gated assessor "sent" is the
end-to-end call on a 10 nm, 64 px synthetic frame that the gate sends to the generalist (two
networks). Latency is the median of ``repeats`` calls; throughput is 64 frames per call.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from spm_bluesky.domain import processing
from spm_bluesky.ml.assessor import load_assessor
from spm_bluesky.ml.assessor.gate import GatedAssessor, GateFile
from spm_bluesky.ml.assessor.synth import generate as synth
from spm_bluesky.ml.assessor.synth.config import SynthConfig
from spm_bluesky.ml.card import GATE
from spm_bluesky.twin import Frame, Instrument


def median_seconds(call, repeats: int) -> float:
    """Median wall time of ``call()`` over ``repeats`` runs, after a short warm-up."""
    for _ in range(max(repeats // 10, 5)):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--weights", default=str(GATE))
    parser.add_argument("--repeats", type=int, default=500)
    args = parser.parse_args()

    assessor = load_assessor(args.weights)
    instrument = Instrument(0)
    frames = np.stack([instrument.scan(Frame(center_x=(i % 8) * 12e-9 - 48e-9,
                                             center_y=(i // 8) * 12e-9 - 48e-9))
                       for i in range(64)])
    inputs = np.concatenate(processing.prepare_batch(frames, 10e-9))
    big = instrument.scan(Frame(size=20e-9, pixels=128))  # four windows
    size = _bytes(Path(args.weights))
    sent = _sent_frame(assessor)
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    print(f"assessor {assessor.model_id}: {size:,} bytes ({size / 2**20:.2f} MiB); "
          f"torch {torch.__version__}; CPU {cpu}")
    print("| threads | network, batch 1 (ms) | end to end, batch 1 (ms) | "
          "end to end, 20 nm 128 px (ms) | network, batch 64 (images/s) | "
          "end to end, batch 64 (images/s) | sent, batch 1 (ms) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for threads in (1, 2):
        torch.set_num_threads(threads)
        one = [inputs[:1]]
        net1 = median_seconds(lambda one=one: assessor.probabilities(one), args.repeats)
        e2e1 = median_seconds(lambda: assessor.assess(frames[0], 10e-9), args.repeats)
        e2e4 = median_seconds(lambda: assessor.assess(big, 20e-9), args.repeats // 5)
        reps = max(args.repeats // 20, 10)
        net64 = median_seconds(lambda: assessor.probabilities(list(inputs[:, None])), reps)
        e2e64 = median_seconds(lambda: assessor.assess_batch(frames, 10e-9), reps)
        routed = ("-" if sent is None else
                  f"{median_seconds(lambda: assessor.assess(sent, 10e-9), args.repeats) * 1e3:.2f}")
        print(f"| {threads} | {net1 * 1e3:.2f} | {e2e1 * 1e3:.2f} | {e2e4 * 1e3:.2f} | "
              f"{64 / net64:,.0f} | {64 / e2e64:,.0f} | {routed} |")


def _bytes(path: Path) -> int:
    """Size of a weight file, or of a gate file and the two weight files it names."""
    if path.suffix != ".npz":
        return path.stat().st_size
    gate = GateFile.read(path)
    return sum((path.parent / name).stat().st_size
               for name in (path.name, gate.specialist, gate.generalist))


def _sent_frame(assessor: object) -> np.ndarray | None:
    """A 10 nm, 64 px synthetic frame that a gated assessor sends to its generalist."""
    if not isinstance(assessor, GatedAssessor):
        return None
    config = replace(SynthConfig(), scan_size_nm_log=(10.0, 10.0), pixels=(64,))
    for seed in range(100):
        image = synth.render(seed, 0, config)[0]
        if assessor.routes(processing.prepare_batch([image], 10e-9))[0]:
            return image
    raise RuntimeError("the gate kept 100 synthetic frames with the specialist")


if __name__ == "__main__":
    main()
