"""The real evaluation set: real STM topographs labelled by eye, and the assessor's figures on it.

Two files. ``real_set.json`` (in ``tests/data/real/`` of a source checkout: per image its
source repository, path, commit, licence, instrument, sample, scan size, pixels, and the label
given by eye with its confidence and reason) is the source of truth for the labels.
``real_set.npz`` holds only the arrays: one float32 array of heights in metres per image,
keyed by image id (read with ``allow_pickle=False``), 4 MB, cut from files of other public
repositories under their permissive licences (``NOTICE``) and kept beside the labels:
:func:`find_arrays` takes an explicit path, then ``$SPM_REAL_SET``, then that copy.
``tools/build_real_set.py`` rebuilds them from the public repositories.

Good versus bad: ``good`` is the positive class; ``multi_apex``, ``blunt``, ``adsorbate`` and
``unstable`` are bad; ``unclear`` images are shown but not scored. An image counts as called
good when p(good) >= the threshold (0.5 unless said otherwise). The figures are on every
scored image; an assessor that abstains also gets its unsure rate (over all images, and
per source) and its figures on the images it is sure of.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property, partial
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from spm_bluesky.domain.display import display_image
from spm_bluesky.ml.assessor import bootstrap, physics
from spm_bluesky.ml.assessor.bootstrap import Interval
from spm_bluesky.ml.assessor.metrics import roc_auc
from spm_bluesky.protocols import CLASSES, GOOD, Assessment, Assessor

_ROOT = Path(__file__).resolve().parents[3]
#: Where the labels (``real_set.json``) are in a source checkout.
REAL_DIR = _ROOT / "tests" / "data" / "real"
NPZ_NAME = "real_set.npz"
JSON_NAME = "real_set.json"
#: The environment variable naming the arrays file.
ARRAYS_ENV = "SPM_REAL_SET"
#: Where the arrays are looked for last: beside the labels, in a source checkout.
REPO_ARRAYS = REAL_DIR / NPZ_NAME
BUILD_HINT = "build them with tools/build_real_set.py"
UNCLEAR = "unclear"
#: Labels an image can have: the assessor's classes and ``unclear``.
LABELS: tuple[str, ...] = (*CLASSES, UNCLEAR)
CONFIDENCES = ("high", "medium", "low")
#: Licences under which an image may be in the set.
ALLOWED_LICENCES = ("MIT", "BSD-2-Clause", "BSD-3-Clause", "Apache-2.0", "CC-BY-4.0")
#: The goals on the real set, zero-shot (no image of it trained on).
GOALS: dict[str, float] = {"balanced_accuracy": 0.85, "auc": 0.90,
                           "source_balanced_accuracy": 0.70}
THRESHOLDS = (0.5, 0.9)
#: The overall figures given intervals (:meth:`RealEvaluation.intervals`).
INTERVAL_FIGURES = ("balanced_accuracy", "auc")
#: The command that writes a weight file's real-set figures into its model card.
CARD_COMMAND = "spm-bluesky eval assessor --real --card [--weights PATH]"


class RealSetMissing(FileNotFoundError):
    """The labels or the arrays are not where they were looked for."""


@dataclass(frozen=True)
class RealImage:
    """One labelled topograph: heights (m, square, row 0 the lowest line) and its record."""

    id: str
    source: str
    image: np.ndarray
    scan_size_m: float
    label: str
    confidence: str
    reason: str
    record: dict[str, Any] = field(repr=False)

    @property
    def frame(self) -> str:
        """The recorded frame the image was cut from (its repository or package, path and
        frame index): crops of one frame share it, and are resampled together."""
        where = self.record.get("repository") or self.record.get("package") or self.source
        return f"{where}:{self.record.get('path', self.id)}#{self.record.get('frame', 0)}"


@dataclass(frozen=True)
class RealSet:
    """The labelled images and the sources they come from."""

    images: tuple[RealImage, ...]
    sources: dict[str, dict[str, str]]
    labelled_by: str
    labelled_on: str

    def subset(self, ids: Sequence[str]) -> RealSet:
        """The images whose ids are in ``ids``, in the set's order."""
        wanted = set(ids)
        return RealSet(tuple(i for i in self.images if i.id in wanted), self.sources,
                       self.labelled_by, self.labelled_on)


def find_arrays(path: Path | str | None = None) -> Path:
    """The arrays file: ``path`` if given, else ``$SPM_REAL_SET`` if set, else
    :data:`REPO_ARRAYS`. The first of these that is given is the one used (a named file
    that is absent is an error, never passed over); :class:`RealSetMissing` says, in one
    line, where it looked and how to build the arrays."""
    env = os.environ.get(ARRAYS_ENV)
    if path is not None:
        chosen, how = Path(path), "given"
    elif env:
        chosen, how = Path(env), f"${ARRAYS_ENV}"
    else:
        chosen, how = REPO_ARRAYS, f"the checkout's copy: no path given, ${ARRAYS_ENV} unset"
    if not chosen.is_file():
        raise RealSetMissing(
            f"the real evaluation set's arrays are not at {chosen} ({how}); {BUILD_HINT} "
            f"CLONES [--arrays PATH] (then pass --real-set PATH or set {ARRAYS_ENV}=PATH)")
    return chosen


def load_real_set(arrays: Path | str | None = None,
                  labels: Path | str | None = None) -> RealSet:
    """The set: labels from ``labels`` (default ``REAL_DIR/real_set.json``), arrays from
    :func:`find_arrays` (``arrays``). No pickles. Raises :class:`RealSetMissing` if either
    file is absent, ValueError if an image is unlabelled or mislabelled, or if the arrays'
    ids are not exactly the labelled images' ids."""
    json_path = Path(REAL_DIR / JSON_NAME if labels is None else labels)
    if not json_path.is_file():
        raise RealSetMissing(f"the real evaluation set's labels are not at {json_path} (they "
                             "ship in tests/data/real of a source checkout)")
    npz_path = find_arrays(arrays)
    meta = json.loads(json_path.read_text())
    images = []
    with np.load(npz_path, allow_pickle=False) as stored:
        ids = [record["id"] for record in meta["images"]]
        missing, extra = set(ids) - set(stored.files), set(stored.files) - set(ids)
        if missing or extra:
            raise ValueError(
                f"{npz_path} does not match {json_path}: {len(missing)} labelled images have "
                f"no array ({', '.join(sorted(missing)[:3]) or '-'}), {len(extra)} arrays "
                f"have no label ({', '.join(sorted(extra)[:3]) or '-'})")
        for record in meta["images"]:
            if record.get("label") not in LABELS:
                raise ValueError(f"image {record['id']}: label {record.get('label')!r} is not "
                                 f"one of {', '.join(LABELS)}")
            images.append(RealImage(
                id=record["id"], source=record["source"], image=stored[record["id"]],
                scan_size_m=float(record["scan_size_m"]), label=record["label"],
                confidence=record["confidence"], reason=record["reason"], record=record))
    return RealSet(tuple(images), meta["sources"], meta["labelled_by"], meta["labelled_on"])


def load_labels(labels: Path | str | None = None) -> dict[str, Any]:
    """The labels file as a dict (``sources``, ``images``, ``labelled_by``...): no arrays."""
    return dict(json.loads(Path(REAL_DIR / JSON_NAME if labels is None else labels)
                           .read_text()))


@dataclass(frozen=True)
class Figures:
    """Good-versus-bad figures on the scored (not ``unclear``) images."""

    n_scored: int
    n_good: int
    n_bad: int
    n_unclear: int
    balanced_accuracy: float
    auc: float
    accuracy_at: dict[str, float]
    mean_p_good_good: float
    mean_p_good_bad: float


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if len(values) else math.nan


def figures(labels: Sequence[str], p_good: Sequence[float] | np.ndarray) -> Figures:
    """Balanced accuracy (at 0.5: the mean of the recalls of the classes present), AUC
    (NaN unless both classes are present), accuracy at 0.5 and 0.9, mean p(good) per class."""
    labels_array = np.asarray(labels)
    p = np.asarray(p_good, dtype=np.float64)
    scored = labels_array != UNCLEAR
    is_good = labels_array[scored] == GOOD
    ps = p[scored]
    called_good = ps >= 0.5
    recalls = [float(np.mean(called_good[mask] == wanted))
               for mask, wanted in ((is_good, True), (~is_good, False)) if mask.any()]
    both = bool(is_good.any() and (~is_good).any())
    return Figures(
        n_scored=int(scored.sum()), n_good=int(is_good.sum()), n_bad=int((~is_good).sum()),
        n_unclear=int((~scored).sum()),
        balanced_accuracy=float(np.mean(recalls)) if recalls else math.nan,
        auc=roc_auc(ps, is_good) if both else math.nan,
        accuracy_at={f"{t:g}": _mean((ps >= t) == is_good) for t in THRESHOLDS},
        mean_p_good_good=_mean(ps[is_good]), mean_p_good_bad=_mean(ps[~is_good]),
    )


@dataclass(frozen=True)
class Difference:
    """One assessor's figure minus another's on the same images, and its interval."""

    value: float
    interval: Interval

    @property
    def told_apart(self) -> bool:
        """True if the interval leaves out zero: the set tells the two assessors apart."""
        low, high = self.interval.low, self.interval.high
        return not (math.isnan(low) or low <= 0.0 <= high)

    def __str__(self) -> str:
        verdict = "told apart" if self.told_apart else "not told apart by this set"
        return f"{self.value:+.3f} ({self.interval}: {verdict})"


@dataclass(frozen=True)
class RealEvaluation:
    """An assessor's verdicts on the real set and the figures they give."""

    model_id: str
    ids: tuple[str, ...]
    sources: tuple[str, ...]
    labels: tuple[str, ...]
    probabilities: np.ndarray  # (n, 5) in CLASSES order
    overall: Figures
    by_source: dict[str, Figures]
    #: Per image: the assessor's unsure score (NaN when it has none) and verdict.
    unsure_scores: np.ndarray
    unsure: np.ndarray
    #: Per image: the frame it was cut from (:attr:`RealImage.frame`).
    frames: tuple[str, ...]

    @property
    def abstains(self) -> bool:
        """True if the assessor gave unsure scores."""
        return bool(np.any(np.isfinite(self.unsure_scores)))

    def unsure_rate(self, source: str | None = None) -> float:
        """Share of images (of ``source``, or all) the assessor is unsure of; NaN if it
        does not abstain."""
        if not self.abstains:
            return math.nan
        mask = np.array([source in (None, s) for s in self.sources])
        return float(np.mean(self.unsure[mask])) if mask.any() else math.nan

    def sure(self) -> Figures:
        """The figures on the images the assessor is sure of."""
        keep = ~self.unsure
        return figures([lab for lab, k in zip(self.labels, keep, strict=True) if k],
                       self.p_good[keep])

    @property
    def p_good(self) -> np.ndarray:
        """p(good) per image."""
        return self.probabilities[:, CLASSES.index(GOOD)]

    @property
    def top_class(self) -> tuple[str, ...]:
        """The most probable class per image."""
        return tuple(CLASSES[i] for i in self.probabilities.argmax(axis=1))

    def goals(self) -> dict[str, dict[str, object]]:
        """Each goal of :data:`GOALS` with the measured value and whether it is met (a
        source's balanced accuracy counts only where it has a scored image)."""
        scored = [f.balanced_accuracy for f in self.by_source.values() if f.n_scored]
        worst = min(scored) if scored else math.nan
        values = {"balanced_accuracy": self.overall.balanced_accuracy,
                  "auc": self.overall.auc, "source_balanced_accuracy": worst}
        return {name: {"target": f">= {target}", "value": values[name],
                       "met": bool(values[name] >= target)}
                for name, target in GOALS.items()}

    def intervals(self) -> dict[str, Interval]:
        """Intervals of the overall balanced accuracy and AUC from resampling whole frames
        (:func:`~spm_bluesky.ml.assessor.bootstrap.by_group`, seeded): how far the set
        pins them down."""
        return dict(self._intervals)

    @cached_property
    def _intervals(self) -> dict[str, Interval]:
        # Computed once (about 0.3 s each): the table, the JSON and the card all show them.
        return {name: bootstrap.by_group(partial(self._figure, name), self.frames)
                for name in INTERVAL_FIGURES}

    def compared(self, other: RealEvaluation) -> dict[str, Difference]:
        """This assessor's balanced accuracy and AUC minus ``other``'s on the same images,
        each with an interval from resampling whole frames, both assessors on the same
        resample (a paired comparison: far narrower than two separate intervals).
        ValueError if the two were not measured on the same images."""
        if other.ids != self.ids:
            raise ValueError("the two evaluations are not of the same real-set images")

        def gain(name: str) -> Callable[[np.ndarray], float]:
            return lambda rows: self._figure(name, rows) - other._figure(name, rows)

        every = np.arange(len(self.ids))
        return {name: Difference(gain(name)(every), bootstrap.by_group(gain(name), self.frames))
                for name in INTERVAL_FIGURES}

    def _figure(self, name: str, rows: np.ndarray) -> float:
        """The overall figure ``name`` (a :class:`Figures` field) on the images ``rows``."""
        return float(getattr(figures(np.asarray(self.labels)[rows], self.p_good[rows]), name))

    def within_source_auc(self) -> float:
        """The mean of the per-source AUCs where a source has both good and bad images: a
        ranking within one instrument, which the pooled AUC can hide."""
        values = [f.auc for f in self.by_source.values() if not math.isnan(f.auc)]
        return float(np.mean(values)) if values else math.nan

    def table(self) -> str:
        """The figures as text: overall, then a row per source."""
        o = self.overall
        spread = self.intervals()
        lines = [
            f"real set: {o.n_scored} scored images ({o.n_good} good, {o.n_bad} bad), "
            f"{o.n_unclear} unclear, from {len(set(self.frames))} frames; model "
            f"{self.model_id}",
            f"balanced accuracy (at 0.5)   {o.balanced_accuracy:.3f}  "
            f"({spread['balanced_accuracy']}, whole frames resampled)",
            f"AUC, good vs bad             {o.auc:.3f}  ({spread['auc']})",
            f"AUC within sources (mean)    {self.within_source_auc():.3f}  "
            "(sources with good and bad images)",
            f"accuracy at 0.5 / 0.9        {o.accuracy_at['0.5']:.3f} / "
            f"{o.accuracy_at['0.9']:.3f}",
            f"mean p(good): good / bad     {o.mean_p_good_good:.3f} / {o.mean_p_good_bad:.3f}",
            *self._unsure_lines(),
            "",
            f"{'source':<20}{'n':>4}{'good':>6}{'bad':>5}{'unclr':>6}{'bal.acc':>9}{'AUC':>7}"
            f"{'acc@0.5':>9}{'acc@0.9':>9}{'unsure':>8}",
        ]
        for name, f in self.by_source.items():
            lines.append(f"{name:<20}{f.n_scored + f.n_unclear:>4}{f.n_good:>6}{f.n_bad:>5}"
                         f"{f.n_unclear:>6}{f.balanced_accuracy:>9.3f}{f.auc:>7.3f}"
                         f"{f.accuracy_at['0.5']:>9.3f}{f.accuracy_at['0.9']:>9.3f}"
                         f"{self.unsure_rate(name):>8.3f}")
        lines += ["", "goals:"] + [
            f"  {name:<26}{g['target']:<8} measured {g['value']:.3f}  "
            f"{'met' if g['met'] else 'MISSED'}" for name, g in self.goals().items()]
        return "\n".join(lines)

    def _unsure_lines(self) -> list[str]:
        if not self.abstains:
            return ["unsure rate                  n/a (this assessor does not abstain)"]
        sure = self.sure()
        return [f"unsure rate                  {self.unsure_rate():.3f}  "
                f"({int(self.unsure.sum())} of {len(self.unsure)} images)",
                f"on the {sure.n_scored} scored images it is sure of: balanced accuracy "
                f"{sure.balanced_accuracy:.3f}, AUC {sure.auc:.3f}"]

    def to_json(self) -> dict[str, Any]:
        """Figures, goals and per-image verdicts as plain JSON values (NaN as null)."""
        def clean(value: Any) -> Any:
            if isinstance(value, float) and math.isnan(value):
                return None
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            return value

        return {
            "model_id": self.model_id,
            "overall": clean(asdict(self.overall)),
            "within_source_auc": clean(self.within_source_auc()),
            "intervals": {name: interval.to_json()
                          for name, interval in self.intervals().items()},
            "by_source": {k: clean(asdict(f)) for k, f in self.by_source.items()},
            "goals": clean(self.goals()),
            "unsure_rate": clean(self.unsure_rate()),
            "unsure_rate_by_source": {k: clean(self.unsure_rate(k)) for k in self.by_source},
            "sure": clean(asdict(self.sure())) if self.abstains else None,
            "images": [
                {"id": i, "source": s, "label": lab, "p_good": float(p), "top_class": top,
                 "probabilities": dict(zip(CLASSES, map(float, probs), strict=True)),
                 "unsure_score": clean(float(score)), "unsure": bool(flag)}
                for i, s, lab, p, top, probs, score, flag in zip(
                    self.ids, self.sources, self.labels, self.p_good, self.top_class,
                    self.probabilities, self.unsure_scores, self.unsure, strict=True)],
        }


def card_entry(evaluation: RealEvaluation, labels: Path | str | None = None) -> dict[str, Any]:
    """The model card's ``real_set`` entry: the figures of ``eval assessor --real`` (overall,
    within sources, per source, unsure rates, goals), without the per-image verdicts, and
    which labels they were measured on (the labels file's sha256, its image count), so a
    card's figures can be told apart from those on a grown set."""
    labels_path = Path(labels) if labels is not None else REAL_DIR / JSON_NAME
    labels_bytes = labels_path.read_bytes()
    figures_json = evaluation.to_json()
    del figures_json["images"]
    return {
        "command": CARD_COMMAND,
        "date": dt.date.today().isoformat(),
        "labels_sha256": hashlib.sha256(labels_bytes).hexdigest(),
        "set_images": len(json.loads(labels_bytes)["images"]),
        "zero_shot": "no image of the real set was trained on",
        **figures_json,
    }


@runtime_checkable
class BatchAssessor(Assessor, Protocol):
    """An assessor that also judges a list of frames of different sizes in one call."""

    def assess_batch(self, images: list[np.ndarray],
                     scan_size_m: list[float]) -> list[Assessment]:
        """One assessment per frame; ``scan_size_m`` gives each frame's edge (m)."""
        ...


def evaluate(assessor: Assessor, real_set: RealSet) -> RealEvaluation:
    """Judge every image of the set with ``assessor`` (in one batch when it can) and compute
    the figures."""
    items = real_set.images
    if isinstance(assessor, BatchAssessor):
        verdicts = assessor.assess_batch([i.image for i in items],
                                         [i.scan_size_m for i in items])
    else:
        verdicts = [assessor.assess(i.image, i.scan_size_m) for i in items]
    probabilities = np.array([[a.probabilities[c] for c in CLASSES] for a in verdicts],
                             dtype=np.float64).reshape(len(items), len(CLASSES))
    return _evaluation(assessor.model_id, real_set, probabilities,
                       np.array([a.unsure_score for a in verdicts], dtype=np.float64),
                       np.array([a.unsure for a in verdicts], dtype=bool))


def _evaluation(model_id: str, real_set: RealSet, probabilities: np.ndarray,
                unsure_scores: np.ndarray, unsure: np.ndarray) -> RealEvaluation:
    labels = tuple(i.label for i in real_set.images)
    sources = tuple(i.source for i in real_set.images)
    p_good = probabilities[:, CLASSES.index(GOOD)]
    by_source = {}
    for name in dict.fromkeys(sources):
        mask = np.array([s == name for s in sources])
        by_source[name] = figures([lab for lab, m in zip(labels, mask, strict=True) if m],
                                  p_good[mask])
    return RealEvaluation(model_id, tuple(i.id for i in real_set.images), sources,
                          labels, probabilities, figures(labels, p_good), by_source,
                          unsure_scores, unsure, tuple(i.frame for i in real_set.images))


def with_veto(evaluation: RealEvaluation, real_set: RealSet) -> RealEvaluation:
    """The same verdicts after the line-streak veto (:func:`physics.veto`, its threshold
    calibrated on twin images): the figures with and without the physics beside the
    network."""
    vetoed = np.stack([physics.veto(p, item.image) for p, item
                       in zip(evaluation.probabilities, real_set.images, strict=True)])
    return reevaluated(evaluation, real_set, vetoed, evaluation.model_id + "+veto")


def reevaluated(evaluation: RealEvaluation, real_set: RealSet, probabilities: np.ndarray,
                model_id: str) -> RealEvaluation:
    """The figures of other probabilities ``(n, 5)`` for the same images (a veto, or a
    combination of assessors), the unsure verdicts kept."""
    return _evaluation(model_id, real_set, probabilities, evaluation.unsure_scores,
                       evaluation.unsure)


def write_json(evaluation: RealEvaluation, path: Path | str) -> Path:
    """Write :meth:`RealEvaluation.to_json` to ``path``."""
    path = Path(path)
    path.write_text(json.dumps(evaluation.to_json(), indent=1) + "\n")
    return path


def scale_bar_nm(edge_nm: float) -> float:
    """A round scale-bar length (1, 2 or 5 x 10^k nm) of about a quarter of the edge."""
    target = edge_nm / 4
    power = 10 ** math.floor(math.log10(target))
    return max(m * power for m in (1, 2, 5) if m * power <= target)


def contact_sheet(real_set: RealSet, path: Path | str,
                  evaluation: RealEvaluation | None = None, columns: int = 10) -> Path:
    """A PNG of every image as a user first sees it (robust plane, 0.5-99.5 % contrast)
    with its id, label, confidence, a scale bar in nm, and, given an evaluation, p(good)
    and the top class (red where the verdict disagrees with a scored label; ``unsure``
    where the assessor abstains)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    images = real_set.images
    rows = max(1, math.ceil(len(images) / columns))
    lines = 4 if evaluation is not None else 3
    fig = Figure(figsize=(columns * 2.2, rows * (2.2 + 0.16 * lines)), dpi=100,
                 layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False)
    verdicts = {}
    if evaluation is not None:
        verdicts = {i: (p, top, unsure) for i, p, top, unsure in zip(
            evaluation.ids, evaluation.p_good, evaluation.top_class, evaluation.unsure,
            strict=True)}
    for ax in axes.ravel():
        ax.set_axis_off()
    for ax, item in zip(axes.ravel(), images, strict=False):
        edge_nm = item.scan_size_m * 1e9
        ax.imshow(display_image(item.image), cmap="afmhot", origin="lower",
                  extent=(0, edge_nm, 0, edge_nm), interpolation="nearest")
        bar = scale_bar_nm(edge_nm)
        x0, y0 = edge_nm * 0.06, edge_nm * 0.07
        ax.plot([x0, x0 + bar], [y0, y0], color="white", lw=3, solid_capstyle="butt")
        ax.text(x0, y0 + edge_nm * 0.04, f"{bar:g} nm", color="white", fontsize=9,
                fontweight="bold")
        short = item.id.removeprefix(f"{item.source}-")
        title = f"{short}\n{item.source}\n{item.label} ({item.confidence})"
        colour = "black"
        if item.id in verdicts:
            p, top, unsure = verdicts[item.id]
            title += f"\np(good) {p:.2f}, {top}" + (", unsure" if unsure else "")
            if item.label != UNCLEAR and (p >= 0.5) != (item.label == GOOD):
                colour = "darkred"
        ax.set_title(title, fontsize=8, color=colour, pad=2)
    path = Path(path)
    fig.savefig(path)
    return path
