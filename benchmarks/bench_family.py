"""One synthetic surface family: good versus bad for assessors side by side, with intervals
(issue 11: "a surface family left out of training, tested on it").

Run: ``python benchmarks/bench_family.py --family layer [--weights A B ...] [--frames N]
[--visible-ghosts | --by-visibility]`` (default: the shipped gate file, 1,500 frames of every
scan size and pixel count the generator draws).

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

With ``--by-visibility`` the frames are multi-apex tips only, with visible ghosts, and the
table gives the share called good by how much the ghost raises the autocorrelation at its
shift (:func:`spm_bluesky.ml.assessor.synth.tips.ghost_visibility`): whether a network misses
ghosts that do not show, or ghosts that do.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import pairwise

import numpy as np
import torch

from spm_bluesky.domain import processing
from spm_bluesky.ml.assessor import load_assessor
from spm_bluesky.ml.assessor.bootstrap import Interval, by_group
from spm_bluesky.ml.assessor.gate import GatedAssessor
from spm_bluesky.ml.assessor.metrics import roc_auc
from spm_bluesky.ml.assessor.real_set import figures
from spm_bluesky.ml.assessor.synth import generate as synth
from spm_bluesky.ml.assessor.synth import tips
from spm_bluesky.ml.assessor.synth.config import FAMILY_NAMES, SynthConfig
from spm_bluesky.ml.card import GATE
from spm_bluesky.protocols import CLASSES, GOOD

#: First seed of the frames: past every seed range training and validation draw from.
FIRST_SEED = 60_000_000
MULTI_APEX = "multi_apex"
#: Bins of ghost visibility for ``--by-visibility`` (the generator keeps 0.1 and more).
VISIBILITY_BINS = (0.1, 0.15, 0.2, 0.3, 0.4, 1.0)


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


def multi_apex_by_visibility(config: SynthConfig, count: int, first_seed: int
                             ) -> tuple[Frames, np.ndarray]:
    """``count`` multi-apex frames of ``config`` (visible ghosts) and each one's ghost
    visibility, recorded as the generator measures it to keep the frame."""
    measured: list[float] = []
    measure = tips.ghost_visibility

    def recording(ghosts: tips.Ghosts) -> float:
        measured.append(measure(ghosts))
        return measured[-1]

    images, sizes, visibility = [], [], []
    tips.ghost_visibility = recording  # what generate.render calls
    try:
        for index in range(count):
            image, scene = synth.render(first_seed + index, CLASSES.index(MULTI_APEX), config)
            images.append(image)
            sizes.append(scene.scan_size)
            visibility.append(measured[-1])  # the draw that was kept
    finally:
        tips.ghost_visibility = measure
    frames = Frames(processing.prepare_batch(images, sizes), np.full(count, MULTI_APEX))
    return frames, np.asarray(visibility)


def visibility_table(frames: Frames, visibility: np.ndarray, weights: Sequence[str]
                     ) -> list[str]:
    """The Markdown table: per bin of ghost visibility, the frames and each assessor's share
    of them called good."""
    p_goods = [(assessor.model_id,
                assessor.probabilities(frames.prepared)[:, CLASSES.index(GOOD)])
               for assessor in map(load_assessor, weights)]
    rows = ["| ghost visibility | frames | " + " | ".join(f"{name} called good"
                                                        for name, _ in p_goods) + " |",
            "|---|---:|" + "---:|" * len(p_goods)]
    for low, high in pairwise(VISIBILITY_BINS):
        inside = (visibility >= low) & (visibility < high)
        shares = " | ".join(f"{np.mean(p[inside] >= 0.5):.0%}" if inside.any() else "-"
                            for _, p in p_goods)
        rows.append(f"| {low:.2f} to {high:.2f} | {int(inside.sum())} | {shares} |")
    return rows


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
    shown = parser.add_mutually_exclusive_group()
    shown.add_argument("--visible-ghosts", action="store_true",
                       help="multi-apex frames only where the ghost shows")
    shown.add_argument("--by-visibility", action="store_true",
                       help="multi-apex frames only (visible ghosts), by how plainly they show")
    args = parser.parse_args()
    if args.frames < 2 * len(CLASSES):
        parser.error(f"--frames must be at least {2 * len(CLASSES)}")
    if args.by_visibility:
        config = replace(SynthConfig(visible_ghosts=True), families=(args.family,))
        started = time.perf_counter()
        frames, visibility = multi_apex_by_visibility(config, args.frames, FIRST_SEED)
        print(f"{args.frames} multi-apex `{args.family}` frames with visible ghosts, rendered "
              f"in {time.perf_counter() - started:.0f} s; torch {torch.__version__}")
        print("\n".join(visibility_table(frames, visibility, args.weights)))
        return
    config = replace(SynthConfig(visible_ghosts=args.visible_ghosts), families=(args.family,))
    ghosts = ", multi-apex only where the ghost shows" if args.visible_ghosts else ""
    run(config, f"`{args.family}`{ghosts}", args.frames, FIRST_SEED, args.weights)


if __name__ == "__main__":
    main()
