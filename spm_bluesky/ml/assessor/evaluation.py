"""Held-out evaluation of an assessor: ``spm-bluesky eval assessor``.

The held-out set is rendered fresh from the :data:`~spm_bluesky.ml.assessor.data.HELD_OUT` seed
range (never used in training or calibration) with the training randomisation and class
mix (one fifth each), except that every frame is kept: an unstable tip's frames without a
single flip stay in (see :mod:`spm_bluesky.ml.assessor.data`). The goals are checked on all
frames; the figures on the frames whose tip state is observable (:func:`observable`:
without those unstable frames and the frames with no molecule in view, bare terrace that
every tip but a blunt one images the same) are reported beside them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from spm_bluesky.domain import processing
from spm_bluesky.ml.assessor import data as ds
from spm_bluesky.ml.assessor.metrics import Report, evaluate, plot_reliability, roc_auc
from spm_bluesky.ml.assessor.synth.config import FAMILY_NAMES
from spm_bluesky.protocols import CLASSES, GOOD, Assessor

UNSTABLE = CLASSES.index("unstable")
#: Molecules in view for a frame to count as observable.
MIN_MOLECULES = 1


@dataclass(frozen=True)
class Evaluation:
    """Figures on all frames of a held-out set (the goals) and on its observable frames."""

    observable: Report
    all_frames: Report
    #: Frames that cannot show the tip: no molecule in view, or an unstable tip that did
    #: not flip.
    no_molecule: int
    no_flip: int

    def text(self) -> str:
        """The report on all frames, then the goal figures on the observable frames."""
        lines = [f"all {self.all_frames.n_images} frames (goals):", "",
                 self.all_frames.text(), "",
                 f"observable frames: {self.observable.n_images} (without {self.no_molecule} "
                 f"frames with no molecule in view and {self.no_flip} unstable frames in "
                 "which the tip did not flip: nothing of the tip's state shows in those)"]
        for name, goal in self.observable.goals().items():
            lines.append(f"{name:<30} {goal['value']:.4f}   goal {goal['goal']}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """Both reports as JSON-ready dicts."""
        return {"set_aside": {"no_molecule": self.no_molecule, "no_flip": self.no_flip},
                "observable": self.observable.to_json(),
                "all_frames": self.all_frames.to_json()}


def held_out_randomisation(rand: ds.Randomisation | None = None) -> ds.Randomisation:
    """The training randomisation with every frame kept (no flip required)."""
    return replace(rand or ds.Randomisation(), unstable_must_flip=False)


def probabilities_on(assessor: Assessor, dataset: ds.Dataset) -> np.ndarray:
    """Calibrated probabilities ``(n, 5)`` for every image of a set, in column order."""
    batch = getattr(assessor, "probabilities", None)
    if batch is not None:  # a torch Assessor: prepare per group, one forward pass per chunk
        return np.concatenate([batch(processing.prepare_batch(g.images, g.scan_sizes))
                               for g in dataset.groups])
    return np.array([list(assessor.assess(image, size).probabilities.values())
                     for g in dataset.groups
                     for image, size in zip(g.images, g.scan_sizes, strict=True)])


def observable(dataset: ds.Dataset) -> np.ndarray:
    """Mask of frames whose tip state can show: at least one molecule in view (molecules
    show the apex: ghosts, blur, adsorbate contrast) and, for an unstable tip, at least one
    flip during the frame."""
    no_flip = (dataset.column("label") == UNSTABLE) & (dataset.column("tip_changes") == 0)
    return ~no_flip & (dataset.column("molecules") >= MIN_MOLECULES)


def evaluate_on(assessor: Assessor, dataset: ds.Dataset) -> Evaluation:
    """Every metric of ``assessor`` on ``dataset``, all frames and observable frames."""
    probabilities = probabilities_on(assessor, dataset)
    labels = dataset.column("label")
    keep = observable(dataset)
    no_molecule = dataset.column("molecules") < MIN_MOLECULES
    return Evaluation(evaluate(probabilities[keep], labels[keep]),
                      evaluate(probabilities, labels), int(no_molecule.sum()),
                      int((~keep & ~no_molecule).sum()))


def run(
    assessor: Assessor,
    images: int = 5000,
    base: int = 0,
    json_path: Path | str | None = None,
    png_path: Path | str | None = None,
    workers: int = 1,
    progress: bool = True,
    split: ds.SeedRange = ds.HELD_OUT,
) -> Evaluation:
    """Render a held-out set, evaluate, print the report, write the JSON and the PNG."""
    held_out = ds.build(split, base, images, held_out_randomisation(), workers, progress)
    evaluation = evaluate_on(assessor, held_out)
    first, stop = held_out.manifest["seeds"]
    print(f"assessor {assessor.model_id} on {split.name} seeds {first} to {stop - 1}")
    print(evaluation.text())
    if json_path is not None:
        payload = {"model_id": assessor.model_id, "split": split.name, "seeds": [first, stop],
                   "class_counts": held_out.manifest["class_counts"], **evaluation.to_json()}
        Path(json_path).write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {json_path}")
    if png_path is not None:
        plot_reliability(evaluation.all_frames, png_path,
                         f"{assessor.model_id}: {evaluation.all_frames.n_images} "
                         f"held-out twin frames")
        print(f"wrote {png_path}")
    return evaluation


def good_versus_bad(p_good: np.ndarray, labels: np.ndarray,
                    threshold: float = 0.5) -> dict[str, float]:
    """Good (positive) versus any defect: AUC of p(good), balanced accuracy and accuracy of
    ``p(good) >= threshold``, and the number of frames."""
    is_good = np.asarray(labels) == CLASSES.index(GOOD)
    called = np.asarray(p_good) >= threshold
    both = 0 < is_good.sum() < len(is_good)  # else AUC and balanced accuracy are undefined
    return {"n": len(is_good),
            "auc": roc_auc(p_good, is_good) if both else float("nan"),
            "balanced_accuracy": float((called[is_good].mean() + (~called[~is_good]).mean()) / 2)
            if both else float("nan"),
            "accuracy": float(np.mean(called == is_good))}


def synth_figures(assessor: Assessor, dataset: ds.Dataset) -> dict[str, dict[str, float]]:
    """Good versus bad on a synthetic set (:mod:`spm_bluesky.ml.assessor.synth`): over all
    frames and per surface family present."""
    p_good = probabilities_on(assessor, dataset)[:, CLASSES.index(GOOD)]
    labels = dataset.column("label")
    family = dataset.column("family")
    out = {"all": good_versus_bad(p_good, labels)}
    for index, name in enumerate(FAMILY_NAMES):
        mask = family == index
        if mask.any():
            out[name] = good_versus_bad(p_good[mask], labels[mask])
    return out
