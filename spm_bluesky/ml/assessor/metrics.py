"""Classifier metrics (pure numpy): confusion, precision/recall, AUC, calibration.

``good versus bad`` treats ``good`` as the positive class and scores it by p(good). The
expected calibration error is reported twice, with 15 equal-width bins: for p(good) as a
binary forecast (what the autonomous loop thresholds) and for the top-label confidence of
the five-class prediction (Guo et al. 2017).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from spm_bluesky.protocols import CLASSES, GOOD

ECE_BINS = 15
#: The assessor's goals on a fresh held-out twin set.
GOALS: dict[str, tuple[str, float]] = {
    "auc_good": (">=", 0.98),
    "accuracy_good": (">=", 0.95),
    "ece_good": ("<=", 0.05),
    "ece_top_label": ("<=", 0.05),
    "balanced_accuracy": (">=", 0.85),
}


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """Counts ``[true, predicted]``."""
    matrix = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels), np.asarray(predicted)), 1)
    return matrix


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve: the chance that a random positive outscores a random
    negative (ties count half), by the rank-sum statistic."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs both positive and negative examples")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # average ranks over ties
    starts = np.flatnonzero(np.r_[True, np.diff(sorted_scores) != 0])
    ends = np.r_[starts[1:], len(scores)]
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + end + 1) / 2
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@dataclass(frozen=True)
class Reliability:
    """Per-bin mean confidence, observed frequency and count (empty bins are NaN / 0)."""

    confidence: list[float]
    frequency: list[float]
    count: list[int]
    ece: float


def reliability(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> Reliability:
    """Binned calibration of ``confidence`` against the 0/1 outcomes ``correct``."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    index = np.clip((confidence * bins).astype(int), 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    conf_sum = np.bincount(index, confidence, minlength=bins)
    hit_sum = np.bincount(index, correct, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = conf_sum / count
        frequency = hit_sum / count
    ece = float(np.sum(np.abs(conf_sum - hit_sum)) / max(len(confidence), 1))
    return Reliability([float(v) for v in mean_conf], [float(v) for v in frequency],
                       [int(c) for c in count], ece)


@dataclass(frozen=True)
class Report:
    """Every figure of ``spm-bluesky eval assessor``."""

    n_images: int
    class_counts: dict[str, int]
    confusion: list[list[int]]
    precision: dict[str, float]
    recall: dict[str, float]
    balanced_accuracy: float
    accuracy: float
    auc_good: float
    accuracy_good: float
    ece_good: float
    ece_top_label: float
    reliability_good: Reliability
    reliability_top_label: Reliability

    def goals(self) -> dict[str, dict[str, object]]:
        """Each of the assessor's goals with the measured value and whether it is met."""
        out: dict[str, dict[str, object]] = {}
        for name, (op, target) in GOALS.items():
            value = float(getattr(self, name))
            met = value >= target if op == ">=" else value <= target
            out[name] = {"value": value, "goal": f"{op} {target}", "met": bool(met)}
        return out

    def to_json(self) -> dict:
        """A JSON-ready dict of every figure plus the goals."""
        return {**asdict(self), "classes": list(CLASSES), "goals": self.goals()}

    def text(self) -> str:
        """A plain-text report: confusion matrix, per-class figures, goals."""
        width = max(len(c) for c in CLASSES) + 2
        lines = [f"held-out images: {self.n_images}  "
                 + "  ".join(f"{c}={n}" for c, n in self.class_counts.items()),
                 "",
                 "confusion matrix (rows: true class, columns: predicted)",
                 " " * width + "".join(f"{c[:10]:>11}" for c in CLASSES)]
        for c, row in zip(CLASSES, self.confusion, strict=True):
            lines.append(f"{c:<{width}}" + "".join(f"{v:>11d}" for v in row))
        lines += ["", f"{'class':<{width}}{'precision':>11}{'recall':>11}"]
        for c in CLASSES:
            lines.append(f"{c:<{width}}{self.precision[c]:>11.3f}{self.recall[c]:>11.3f}")
        lines += ["", f"five-class accuracy            {self.accuracy:.4f}", ""]
        for name, goal in self.goals().items():
            mark = "ok" if goal["met"] else "MISSED"
            lines.append(f"{name:<30} {goal['value']:.4f}   goal {goal['goal']:<8} {mark}")
        return "\n".join(lines)


def evaluate(probabilities: np.ndarray, labels: np.ndarray) -> Report:
    """All metrics for calibrated class probabilities ``(n, 5)`` and true class indices."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    k = len(CLASSES)
    predicted = probabilities.argmax(axis=1)
    matrix = confusion_matrix(labels, predicted, k)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.diag(matrix) / matrix.sum(axis=0)
        recall = np.diag(matrix) / matrix.sum(axis=1)
    good = CLASSES.index(GOOD)
    p_good = probabilities[:, good]
    is_good = labels == good
    rel_good = reliability(p_good, is_good)
    rel_top = reliability(probabilities.max(axis=1), predicted == labels)
    present = matrix.sum(axis=1) > 0
    return Report(
        n_images=len(labels),
        class_counts={c: int(n) for c, n in zip(CLASSES, matrix.sum(axis=1), strict=True)},
        confusion=matrix.tolist(),
        precision={c: float(np.nan_to_num(v)) for c, v in zip(CLASSES, precision, strict=True)},
        recall={c: float(np.nan_to_num(v)) for c, v in zip(CLASSES, recall, strict=True)},
        balanced_accuracy=float(np.mean(recall[present])),
        accuracy=float(np.mean(predicted == labels)),
        auc_good=roc_auc(p_good, is_good),
        accuracy_good=float(np.mean((p_good >= 0.5) == is_good)),
        ece_good=rel_good.ece,
        ece_top_label=rel_top.ece,
        reliability_good=rel_good,
        reliability_top_label=rel_top,
    )


def plot_reliability(report: Report, path: Path | str, title: str = "") -> Path:
    """Write the reliability diagrams (p(good) and top-label confidence) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.8))
    panels = ((report.reliability_good, "p(good) vs fraction good", report.ece_good),
              (report.reliability_top_label, "top-label confidence vs accuracy",
               report.ece_top_label))
    for ax, (rel, name, ece) in zip(axes, panels, strict=True):
        edges = np.linspace(0, 1, len(rel.count) + 1)
        centres = (edges[:-1] + edges[1:]) / 2
        freq = np.nan_to_num(np.asarray(rel.frequency, dtype=float))
        filled = np.asarray(rel.count) > 0
        ax.bar(centres[filled], freq[filled], width=1 / len(rel.count), edgecolor="k",
               alpha=0.7, label="observed")
        ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
        ax.set_xlabel("predicted probability")
        ax.set_ylabel("observed frequency")
        ax.set_title(f"{name}\nECE ({len(rel.count)} bins) = {ece:.3f}")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        twin = ax.twinx()
        twin.plot(centres[filled], np.asarray(rel.count)[filled], "o-", color="tab:red",
                  ms=3, lw=1, label="images per bin")
        twin.set_yscale("log")
        twin.set_ylabel("images per bin", color="tab:red")
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(title or f"assessor reliability on {report.n_images} held-out images")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
