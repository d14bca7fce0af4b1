"""The gated assessor's threshold: where the gate sends frames, and what the pair then scores
on the twin and on the real set, for a sweep of thresholds (issue 11).

Run: ``python benchmarks/bench_gated_assessor.py --generalist PATH [--specialist PATH]
[--data DIR] [--real-set PATH]``. The generalist is any weight file of ``spm-bluesky train
assessor --synth-images ...`` (see benchmarks/RESULTS.md for the commands).

Why: every single network so far trades one set for the other. The shipped specialist holds
the twin (AUC 0.986, accuracy 0.950) and fails on real images; the generalists reach a
balanced accuracy near 0.8 on real images and lose the twin's double tips. The gate asks
which of the two has seen images like this one.

The gate is :mod:`spm_bluesky.ml.assessor.gate`'s, fitted as ``spm-bluesky train gate`` fits
it (``--fit-frames`` twin and synthetic validation frames; a training run's ``--data``
folder is reused); it never sees a real image. A frame goes to the generalist when the
gate's p(twin) is under the threshold; every threshold of ``--thresholds`` is one row (the
command's default is 0.5). Each threshold gives two rows: the gated assessor's own rule (a
frame sent away gets the two networks' probabilities mixed by p(twin)/threshold,
:func:`~spm_bluesky.ml.assessor.gate.mix`) and, for comparison, choosing (the generalist's
verdict standing alone).

Figures per row: the share of the twin's held-out frames (5,000, seed 0, as the model card),
of held-out synthetic frames (1,000, every family) and of the real set sent to the
generalist; the twin's AUC and accuracy (good versus bad, all frames; goals 0.98 / 0.95);
the real set's balanced accuracy and AUC (goals 0.85 / 0.90) and the mean AUC within
sources.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch

from spm_bluesky.domain import processing
from spm_bluesky.ml.assessor import data as ds
from spm_bluesky.ml.assessor.assessor import load_network
from spm_bluesky.ml.assessor.evaluation import held_out_randomisation
from spm_bluesky.ml.assessor.gate import fit_logistic, gate_features, mix
from spm_bluesky.ml.assessor.metrics import roc_auc
from spm_bluesky.ml.assessor.real_set import (
    RealEvaluation,
    evaluate,
    load_real_set,
    reevaluated,
)
from spm_bluesky.ml.assessor.synth import generate as synth
from spm_bluesky.ml.assessor.synth.config import SynthConfig
from spm_bluesky.ml.assessor.training import prepared
from spm_bluesky.protocols import CLASSES, GOOD


def gated(specialist: np.ndarray, generalist: np.ndarray, p_twin: np.ndarray,
          threshold: float, mixed: bool) -> np.ndarray:
    """The pair's probabilities: the specialist's where p(twin) reaches the threshold, else
    the gated assessor's mix (``mixed``) or the generalist's alone."""
    sent = mix(specialist, generalist, p_twin, threshold) if mixed else generalist
    return np.where((p_twin < threshold)[:, None], sent, specialist)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generalist", type=Path, required=True)
    parser.add_argument("--specialist", type=Path, default=None,
                        help="default: the shipped assessor")
    parser.add_argument("--data", type=Path, default=None,
                        help="folder of rendered sets (a training run's --data) to reuse")
    parser.add_argument("--real-set", type=Path, default=None)
    parser.add_argument("--fit-frames", type=int, default=2000)
    parser.add_argument("--thresholds", type=float, nargs="+",
                        default=[0.5, 0.2, 0.1, 0.05, 0.02])
    args = parser.parse_args()
    torch.set_num_threads(2)
    started = time.perf_counter()
    specialist = load_network(args.specialist)
    generalist = load_network(args.generalist)

    twin_fit = prepared(ds.cached(ds.VALIDATION, 0, args.fit_frames, args.data))
    synth_fit = prepared(synth.cached(ds.VALIDATION, 0, args.fit_frames, args.data,
                                      SynthConfig()))
    twin_set = ds.cached(ds.HELD_OUT, 0, 5000, args.data,
                         held_out_randomisation(ds.Randomisation()))
    twin_held_out = prepared(twin_set)
    synth_held_out = prepared(synth.cached(ds.HELD_OUT, 0, 1000, args.data, SynthConfig()))
    real = load_real_set(args.real_set)
    real_frames = processing.prepare_batch([i.image for i in real.images],
                                           [i.scan_size_m for i in real.images])

    gate = fit_logistic(gate_features(specialist, twin_fit), gate_features(specialist, synth_fit))
    p_twin = {name: gate.p_twin(gate_features(specialist, frames)) for name, frames in
              (("twin", twin_held_out), ("synth", synth_held_out), ("real", real_frames))}
    twin_good = twin_set.column("label") == CLASSES.index(GOOD)
    twin_p = {name: a.probabilities(twin_held_out) for name, a in
              (("specialist", specialist), ("generalist", generalist))}
    real_eval = {name: evaluate(a, real) for name, a in
                 (("specialist", specialist), ("generalist", generalist))}

    def row(name: str, twin_probabilities: np.ndarray, real_evaluation: RealEvaluation,
            shares: str) -> str:
        p = twin_probabilities[:, CLASSES.index(GOOD)]
        o = real_evaluation.overall
        return (f"| {name} | {shares} | {roc_auc(p, twin_good):.4f} / "
                f"{np.mean((p >= 0.5) == twin_good):.4f} | {o.balanced_accuracy:.3f} / "
                f"{o.auc:.3f} | {real_evaluation.within_source_auc():.3f} |")

    print(f"specialist {specialist.model_id}, generalist {generalist.model_id}; "
          f"{platform.processor() or platform.machine()}, torch {torch.__version__}")
    print("| assessor | to the generalist: twin / synthetic / real | twin AUC / acc | "
          "real BA / AUC | real AUC within sources |")
    print("|---|---|---|---|---|")
    for name in ("specialist", "generalist"):
        share = "0 / 0 / 0" if name == "specialist" else "1 / 1 / 1"
        print(row(name, twin_p[name], real_eval[name], share))
    for threshold in args.thresholds:
        shares = " / ".join(f"{np.mean(p_twin[n] < threshold):.3f}"
                            for n in ("twin", "synth", "real"))
        for mixed in (True, False):
            twin_gated = gated(twin_p["specialist"], twin_p["generalist"], p_twin["twin"],
                               threshold, mixed)
            real_gated = gated(real_eval["specialist"].probabilities,
                               real_eval["generalist"].probabilities, p_twin["real"],
                               threshold, mixed)
            print(row(f"gated at p(twin) < {threshold:g}, {'mixed' if mixed else 'chosen'}",
                      twin_gated, reevaluated(real_eval["specialist"], real, real_gated,
                                              "gated"), shares))
    print(f"\n{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
