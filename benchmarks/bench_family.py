"""One synthetic surface family: good versus bad for assessors side by side, with intervals
(issue 11: "a surface family left out of training, tested on it").

Run: ``python benchmarks/bench_family.py --family layer [--weights A B ...] [--frames N]
[--visible-ghosts]`` (default: the shipped gate file, 1,500 frames of every scan size and
pixel count the generator draws).

A weight file trained with ``--leave-out FAMILY`` carries a figure on that family in its
card, but on the 1,000 held-out synthetic frames of every family, of which a family has
about 160: its interval is about +-0.05 wide, as wide as the differences it should tell
apart. Here every frame is of the one family, the five classes in turn, from seeds (from
60,000,000) outside every training and validation range, so the same question gets ten
times the frames. Frames are independent, so the interval resamples single frames.

Per assessor: balanced accuracy at p(good) 0.5 with its 95 % interval, AUC, the AUC of good
versus multi-apex frames alone, the mean p(good) of good and of bad frames, how often each
class is called good (the good class's share is its recall; a defect's share is how often it
would pass), and for a gate file, the share of frames it sends to its generalist. The frames
have no monatomic steps under the family (in training, a quarter of them do).
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from spm_bluesky.domain import processing
from spm_bluesky.ml.assessor import load_assessor
from spm_bluesky.ml.assessor.bootstrap import Interval, by_group
from spm_bluesky.ml.assessor.gate import GatedAssessor
from spm_bluesky.ml.assessor.metrics import roc_auc
from spm_bluesky.ml.assessor.real_set import figures
from spm_bluesky.ml.assessor.synth import generate as synth
from spm_bluesky.ml.assessor.synth.config import FAMILY_NAMES, SynthConfig
from spm_bluesky.ml.card import GATE
from spm_bluesky.protocols import CLASSES, GOOD

#: First seed of the frames: past every seed range training and validation draw from.
FIRST_SEED = 60_000_000
MULTI_APEX = "multi_apex"


@dataclass(frozen=True)
class Frames:
    """Prepared frames of one configuration and their class names."""

    prepared: list[np.ndarray]
    labels: np.ndarray


def render(config: SynthConfig, count: int, first_seed: int) -> Frames:
    """``count`` frames of ``config``, the five classes in turn, prepared for the assessor."""
    images, sizes, labels = [], [], []
    for index in range(count):
        label = index % len(CLASSES)
        image, scene = synth.render(first_seed + index, label, config)
        images.append(image)
        sizes.append(scene.scan_size)
        labels.append(CLASSES[label])
    return Frames(processing.prepare_batch(images, sizes), np.asarray(labels))


def balanced_accuracy_interval(labels: np.ndarray, p_good: np.ndarray) -> Interval:
    """The 95 % interval of the balanced accuracy, resampling single frames."""
    return by_group(lambda index: figures(list(labels[index]), p_good[index]).balanced_accuracy,
                    [str(i) for i in range(len(labels))])


def table(frames: Frames, weights: Sequence[str]) -> list[str]:
    """The Markdown table: one row per assessor."""
    labels = frames.labels
    good, multi = labels == GOOD, labels == MULTI_APEX
    called = " | ".join(f"{name} called good" for name in CLASSES)
    rows = [f"| assessor | balanced accuracy (95 % interval) | AUC | AUC good vs multi-apex "
            f"| mean p(good): good / bad | {called} | sent to the generalist |",
            "|---|---|---:|---:|---:|" + "---:|" * len(CLASSES) + "---:|"]
    for path in weights:
        assessor = load_assessor(path)
        p_good = assessor.probabilities(frames.prepared)[:, CLASSES.index(GOOD)]
        found = figures(list(labels), p_good)
        interval = balanced_accuracy_interval(labels, p_good)
        pair = np.r_[p_good[good], p_good[multi]]
        separates = roc_auc(pair, np.r_[np.ones(good.sum()), np.zeros(multi.sum())] > 0)
        shares = " | ".join(f"{np.mean(p_good[labels == name] >= 0.5):.0%}" for name in CLASSES)
        sent = (f"{np.mean(assessor.routes(frames.prepared)):.1%}"
                if isinstance(assessor, GatedAssessor) else "-")
        rows.append(f"| {assessor.model_id} | {found.balanced_accuracy:.3f} "
                    f"({interval.low:.3f} to {interval.high:.3f}) | {found.auc:.3f} | "
                    f"{separates:.3f} | {found.mean_p_good_good:.2f} / "
                    f"{found.mean_p_good_bad:.2f} | {shares} | {sent} |")
    return rows


def run(config: SynthConfig, description: str, count: int, first_seed: int,
        weights: Sequence[str]) -> None:
    """Render, judge with every assessor and print the table."""
    torch.manual_seed(0)
    started = time.perf_counter()
    frames = render(config, count, first_seed)
    print(f"{count} {description} frames rendered in {time.perf_counter() - started:.0f} s; "
          f"torch {torch.__version__}, {platform.machine()}")
    print("\n".join(table(frames, weights)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--family", choices=FAMILY_NAMES, required=True)
    parser.add_argument("--weights", nargs="+", default=[str(GATE)],
                        help="gate files or weight files (default: the shipped gate)")
    parser.add_argument("--frames", type=int, default=1500)
    parser.add_argument("--visible-ghosts", action="store_true",
                        help="multi-apex frames only where the ghost shows")
    args = parser.parse_args()
    if args.frames < 2 * len(CLASSES):
        parser.error(f"--frames must be at least {2 * len(CLASSES)}")
    config = replace(SynthConfig(visible_ghosts=args.visible_ghosts), families=(args.family,))
    ghosts = ", multi-apex only where the ghost shows" if args.visible_ghosts else ""
    run(config, f"`{args.family}`{ghosts}", args.frames, FIRST_SEED, args.weights)


if __name__ == "__main__":
    main()
