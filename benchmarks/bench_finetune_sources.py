"""Leave-one-source-out on the real set: adapt the assessor with at most 30 labels of one
source, test on the rest of that source (issue 11, point 5).

Run: ``python benchmarks/bench_finetune_sources.py [--real-set PATH] [--splits N]``. For every
source with at least ``--min-images`` scored (not ``unclear``) images, each of ``--splits``
seeded, stratified splits keeps ``min(30, n // 2)`` images for fine-tuning (the rest is the
test) and fine-tunes the base weights on them exactly as ``spm-bluesky train assessor
--from-tiled`` does (:func:`spm_bluesky.ml.assessor.finetune.finetune`, default
configuration, the split's seed: the pull-back strength chosen by cross-validation on the
split's fine-tuning images alone). "Before" is the base as given (default: the shipped gate,
both networks); the network fine-tuned is its generalist. The table gives, per source, the
mean over splits of the balanced accuracy and AUC (good versus bad) on the test images
before and after, the mean numbers of images fine-tuned on and tested, and the anchor each
split chose. Crops of one scan (one tip, one moment) stay on one side of every split and of
the anchor's cross-validation, as a source's later scans would be; ``--split-crops`` lets
them fall on both sides (the figure before 2026-12-01, in which a test crop's label could be
learnt from its scan-mate). A source
whose fine-tuning images are all of one kind is not fine-tuned (the command refuses that
too): its row says so and keeps the figures before.

A benchmark script rather than an ``eval assessor`` option: it trains models (minutes on a
CPU), and the real set's images are otherwise never trained on.
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch

from spm_bluesky.ml.assessor.assessor import TipNetAssessor, load_assessor
from spm_bluesky.ml.assessor.finetune import (
    FinetuneConfig,
    FinetuneError,
    LabelledFrame,
    base_network,
    check_classes,
    finetune,
    good_versus_bad,
    split_held_out,
)
from spm_bluesky.ml.assessor.real_set import UNCLEAR, load_real_set

#: Most labels of one source fine-tuned on (the issue's figure).
MAX_LABELS = 30


def source_frames(arrays: Path | None, by_scan: bool = True) -> dict[str, list[LabelledFrame]]:
    """The scored images of the real set, by source; with ``by_scan``, each grouped with
    the other crops of its scan."""
    by_source: dict[str, list[LabelledFrame]] = {}
    for image in load_real_set(arrays).images:
        if image.label != UNCLEAR:
            by_source.setdefault(image.source, []).append(
                LabelledFrame(image.id, image.image, image.scan_size_m, image.label,
                              group=image.frame if by_scan else ""))
    return by_source


def nan_mean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else math.nan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real-set", type=Path, default=None,
                        help="real_set.npz (default: $SPM_REAL_SET, then the checkout's)")
    parser.add_argument("--weights", type=Path, default=None,
                        help="the base: a weight or gate file (the shipped gate; its "
                             "generalist is fine-tuned)")
    parser.add_argument("--anchor", type=float, default=None,
                        help="a fixed L2-SP pull-back strength (default: chosen by "
                             "cross-validation on each split's fine-tuning labels)")
    parser.add_argument("--splits", type=int, default=3, help="seeded splits per source")
    parser.add_argument("--min-images", type=int, default=8,
                        help="scored images a source needs to take part")
    parser.add_argument("--split-crops", action="store_true",
                        help="let crops of one scan fall on both sides of a split")
    args = parser.parse_args()

    base = load_assessor(args.weights, calibrated=False)
    net = base_network(args.weights)
    rows = []
    started = time.perf_counter()
    for source, frames in sorted(source_frames(args.real_set,
                                               by_scan=not args.split_crops).items()):
        if len(frames) < args.min_images:
            continue
        n_train = min(MAX_LABELS, len(frames) // 2)
        before: dict[str, list[float]] = {"ba": [], "auc": []}
        after: dict[str, list[float]] = {"ba": [], "auc": []}
        refused = 0
        anchors: list[float] = []
        sizes: list[tuple[int, int]] = []
        for seed in range(args.splits):
            train, test = split_held_out(frames, 1 - n_train / len(frames), seed)
            assert len(train) <= MAX_LABELS, (source, len(train))
            sizes.append((len(train), len(test)))
            b = good_versus_bad(base, test)
            before["ba"].append(b.balanced_accuracy)
            before["auc"].append(b.auc)
            try:
                check_classes(train)
            except FinetuneError:
                refused += 1
                continue
            tuned = finetune(net, train, FinetuneConfig(seed=seed, anchor=args.anchor))
            anchors.append(tuned.anchor)
            a = good_versus_bad(TipNetAssessor(tuned.model, f"finetuned-{source}-{seed}"), test)
            after["ba"].append(a.balanced_accuracy)
            after["auc"].append(a.auc)
        good = sum(frame.label == "good" for frame in frames)
        note = (f"{refused} of {args.splits} splits one class only: not fine-tuned"
                if refused else "")
        n_train_mean, n_test_mean = np.mean(sizes, axis=0)
        rows.append((source, len(frames), good, n_train_mean, n_test_mean,
                     nan_mean(before["ba"]), nan_mean(before["auc"]),
                     nan_mean(after["ba"]), nan_mean(after["auc"]),
                     " ".join(f"{a:g}" for a in anchors), note))
        print(f"{source}: done ({time.perf_counter() - started:.0f} s)", flush=True)

    print(f"\nbase {base.model_id}; {args.splits} splits per source; torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}")
    print(f"{'source':20s} {'n':>3s} {'good':>4s} {'train':>5s} {'test':>4s} "
          f"{'BA before':>9s} {'AUC before':>10s} {'BA after':>8s} {'AUC after':>9s}  anchors")
    for source, n, good, n_train, n_test, bba, bauc, aba, aauc, chosen, refused in rows:
        print(f"{source:20s} {n:3d} {good:4d} {n_train:5.1f} {n_test:4.1f} {bba:9.3f} "
              f"{bauc:10.3f} {aba:8.3f} {aauc:9.3f}  {chosen or '-'}  {refused}")
    tuned = [row for row in rows if not math.isnan(row[7])]
    if tuned:
        print(f"\nmean over the {len(tuned)} fine-tuned sources: balanced accuracy "
              f"{np.mean([r[5] for r in tuned]):.3f} before, {np.mean([r[7] for r in tuned]):.3f}"
              f" after (goal >= 0.92); {time.perf_counter() - started:.0f} s in all")


if __name__ == "__main__":
    main()
