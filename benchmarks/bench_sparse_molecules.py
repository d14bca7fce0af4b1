"""Sparse molecules drawn by a generator other than the twin: good versus bad, and good
versus multi-apex, for assessors side by side (issue 11).

Run: ``python benchmarks/bench_sparse_molecules.py [--weights A B ...] [--frames N]``
(default: the shipped gate file). The issue's second outside set is an independent simulator
of the twin's own sample (MgPc on Ag(100), 8 to 14 nm), on which the first assessor called
72 % of good tips bad and could not tell good tips from multi-apex ones. That set is not
here; this is the nearest stand-in the project has: the synthetic generator's ``molecules``
family (:mod:`spm_bluesky.ml.assessor.synth`, not the twin's renderer) at 8 to 14 nm and 64
or 128 px, the five classes in turn, multi-apex frames only where the ghost shows
(``SynthConfig.visible_ghosts``: a ghost that does not show cannot be judged). The seeds
(from 50,000,000) are outside every training and validation range. It is the project's own
generator, so it is no substitute for the outside set; it shows which way a change moves.

Per assessor: balanced accuracy at p(good) 0.5 and AUC, good versus bad; the AUC of good
versus multi-apex frames alone; the mean p(good) of good and of bad frames; and for a gate
file, the share of frames it sends to its generalist.
"""

from __future__ import annotations

import argparse
import platform
import time
from dataclasses import replace

import numpy as np
import torch

from spm_bluesky.domain import processing
from spm_bluesky.ml.assessor import load_assessor
from spm_bluesky.ml.assessor.gate import GatedAssessor
from spm_bluesky.ml.assessor.metrics import roc_auc
from spm_bluesky.ml.assessor.real_set import figures
from spm_bluesky.ml.assessor.synth import generate as synth
from spm_bluesky.ml.assessor.synth.config import SynthConfig
from spm_bluesky.ml.card import GATE
from spm_bluesky.protocols import CLASSES, GOOD

#: First seed of the frames: past every seed range training and validation draw from.
FIRST_SEED = 50_000_000
MULTI_APEX = "multi_apex"


def frames(count: int) -> tuple[list[np.ndarray], list[float], np.ndarray]:
    """``count`` sparse-molecule frames (heights in m), their edges (m) and labels."""
    config = replace(SynthConfig(visible_ghosts=True), families=("molecules",),
                     scan_size_nm_log=(8.0, 14.0), pixels=(64, 128))
    images, sizes, labels = [], [], []
    for index in range(count):
        label = index % len(CLASSES)
        image, scene = synth.render(FIRST_SEED + index, label, config)
        images.append(image)
        sizes.append(scene.scan_size)
        labels.append(CLASSES[label])
    return images, sizes, np.asarray(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--weights", nargs="+", default=[str(GATE)],
                        help="gate files or weight files (default: the shipped gate)")
    parser.add_argument("--frames", type=int, default=1000)
    args = parser.parse_args()
    torch.manual_seed(0)
    started = time.perf_counter()
    images, sizes, labels = frames(args.frames)
    prepared = processing.prepare_batch(images, sizes)
    print(f"{args.frames} sparse-molecule frames, 8 to 14 nm, rendered in "
          f"{time.perf_counter() - started:.0f} s; torch {torch.__version__}, "
          f"{platform.machine()}")
    good, multi = labels == GOOD, labels == MULTI_APEX
    print("| assessor | balanced accuracy | AUC | AUC good vs multi-apex "
          "| mean p(good): good / bad | sent to the generalist |")
    print("|---|---:|---:|---:|---:|---:|")
    for path in args.weights:
        assessor = load_assessor(path)
        p_good = assessor.probabilities(prepared)[:, CLASSES.index(GOOD)]
        found = figures(list(labels), p_good)
        pair = np.r_[p_good[good], p_good[multi]]
        separates = roc_auc(pair, np.r_[np.ones(good.sum()), np.zeros(multi.sum())] > 0)
        sent = (f"{np.mean(assessor.routes(prepared)):.1%}"
                if isinstance(assessor, GatedAssessor) else "-")
        print(f"| {assessor.model_id} | {found.balanced_accuracy:.3f} | {found.auc:.3f} | "
              f"{separates:.3f} | {found.mean_p_good_good:.2f} / {found.mean_p_good_bad:.2f} | "
              f"{sent} |")


if __name__ == "__main__":
    main()
