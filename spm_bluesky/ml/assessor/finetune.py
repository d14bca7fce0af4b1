"""Fine-tuning the assessor on a person's labels of their own instrument's images.

The shipped assessor learnt from the twin (and synthetic frames); an instrument it never saw
can look different enough to fool it. A few dozen images labelled by eye adapt it:

- **from what**: the shipped generalist (``generalist.pt``), the network the shipped gate
  sends unfamiliar instruments' frames to and the better base on the real set's
  leave-one-source-out experiment (benchmarks/RESULTS.md); a gate file given as the base
  means its generalist;
- **what is trained**: the last layer only (the five-class head on the network's pooled
  features), from the base weights, with a pull back towards them (L2-SP: the squared
  distance to the base head, times the anchor). A few dozen frames cannot
  retrain convolutions (nor estimate batch-norm statistics), and the features are computed
  once, so fine-tuning takes seconds on a CPU (training every weight took minutes per run
  on the same machine);
- **how hard it pulls back**: chosen from the labels themselves (:func:`choose_anchor`):
  each of :data:`ANCHORS` is tried in a stratified cross-validation over the training
  frames, and the one with the lowest held-out loss wins. Too weak a pull lets a few dozen
  frames overfit the head; too strong keeps the base's mistakes; which is right depends on
  the instrument and the labels, so no one value is fixed;
- **what it sees**: each labelled frame's windows as judged in operation, plus
  :attr:`FinetuneConfig.views` random windows, zooms, noise and flips of it (the training
  augmentation, :mod:`~spm_bluesky.ml.assessor.augment`); the classes weighted so that good
  and bad frames count the same, whatever their numbers;
- **what is kept aside**: a stratified, seeded part of the labels (:func:`split_held_out`),
  on which the base and the fine-tuned assessors are both measured for the model card.
  Frames cut from one scan (:attr:`LabelledFrame.group`) stay on one side of that split and
  of the cross-validation's folds: they share a tip and a moment, so a scan-mate's label
  would otherwise tell the answer.

``unclear`` labels are never trained on. The temperature stays the base weights' (too few
labels to fit one), and the unsure calibration is not carried over (it describes the base
network's features).

:func:`frames_from_tiled` reads the labelled frames from Tiled; ``spm-bluesky train assessor
--from-tiled`` ties it together (:func:`finetune_and_write`).
"""

from __future__ import annotations

import copy
import csv
import hashlib
import io
import json
import platform
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from spm_bluesky import schema
from spm_bluesky.domain import processing
from spm_bluesky.ml.assessor import gate
from spm_bluesky.ml.assessor.assessor import (
    MODEL_NAME,
    FrameAssessor,
    TipNetAssessor,
    calibrate,
    frame_scores,
    inference_copy,
    load_assessor,
    serialise,
    window_outputs,
)
from spm_bluesky.ml.assessor.augment import Augmentation, augment_batch
from spm_bluesky.ml.assessor.model import TipNet
from spm_bluesky.ml.assessor.real_set import Figures, figures
from spm_bluesky.ml.card import (
    GENERALIST,
    card_header,
    model_id_for,
    weight_file_fields,
    write_card,
)
from spm_bluesky.protocols import CLASSES, GOOD
from spm_bluesky.storage import ImageLabel, LabelClass, label_class, read_image_stream
from spm_bluesky.storage.read import read_stream_table

#: The pull-back strengths (L2-SP) that :func:`choose_anchor` tries.
ANCHORS: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 3e-1, 1.0)
#: The pull-back strength when the labels are too few to cross-validate (a kind with one
#: frame): the middle of :data:`ANCHORS`.
FALLBACK_ANCHOR = 1e-1


class FinetuneError(ValueError):
    """The labels cannot fine-tune an assessor (none, one class only, an image not found);
    the message says which and nothing was written."""


@dataclass(frozen=True)
class FrameLabel:
    """A label keyed by the image it names: run uid and ``seq_num`` of its ``primary``
    event (as stored in Tiled, or as given in a labels file).

    ``scan`` names the scan the image was cut from, when a labels file says that several
    images are crops of one scan (:attr:`LabelledFrame.group`); empty, the image is a scan
    of its own, as every frame a session records is."""

    run_uid: str
    seq_num: int
    label: LabelClass
    scan: str = ""

    @classmethod
    def of(cls, label: ImageLabel) -> FrameLabel:
        """The frame a stored label names, and its class."""
        return cls(label.run_uid, label.seq_num, label.label)


@dataclass(frozen=True)
class LabelledFrame:
    """One labelled frame to train or test on: heights (m, square), edge (m), class.

    ``group`` names the scan it was cut from when several frames are crops of one scan (one
    tip, one moment: their labels go together), so that splits never put crops of one scan
    on both sides; empty, the frame is a scan of its own."""

    key: str
    image: np.ndarray = field(repr=False)
    scan_size_m: float
    label: str
    group: str = ""

    @property
    def scan(self) -> str:
        """The scan the frame belongs to: its group, or itself."""
        return self.group or self.key


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything that decides the fine-tuned weights, besides the base weights and labels."""

    seed: int = 0
    #: Augmented windows of each labelled frame, besides the windows it is judged on.
    views: int = 16
    #: Passes over the windows (each one full-batch optimiser step on the last layer).
    epochs: int = 300
    learning_rate: float = 1e-2
    weight_decay: float = 0.0
    #: Weight of the squared distance to the base weights in the loss (L2-SP); None: chosen
    #: among :data:`ANCHORS` by cross-validation on the training labels (:func:`choose_anchor`).
    anchor: float | None = None
    #: Folds of that cross-validation (fewer if a kind has fewer frames).
    folds: int = 4
    #: Share of the labels kept aside for the card's figures (stratified, seeded).
    held_out_fraction: float = 0.25
    threads: int = 2
    augmentation: Augmentation = field(default_factory=Augmentation)


def usable_labels(labels: Iterable[FrameLabel]) -> list[FrameLabel]:
    """The labels with a tip class (``unclear`` ones dropped: never trained on)."""
    return [label for label in labels if label.label != LabelClass.UNCLEAR]


def trainable(frames: Iterable[LabelledFrame]) -> list[LabelledFrame]:
    """The frames with a tip class (``unclear`` ones dropped)."""
    return [frame for frame in frames if frame.label in CLASSES]


def check_classes(frames: Sequence[LabelledFrame]) -> None:
    """:class:`FinetuneError` unless there are good and bad frames to learn from."""
    if not frames:
        raise FinetuneError("no labelled images to fine-tune on (unclear ones do not count)")
    good = sum(frame.label == GOOD for frame in frames)
    if good in (0, len(frames)):
        only = "good" if good else "bad"
        raise FinetuneError(f"all {len(frames)} labelled images are {only}: fine-tuning needs "
                            "good and bad ones (label some of the other kind)")


def split_held_out(frames: Sequence[LabelledFrame], fraction: float,
                   seed: int) -> tuple[list[LabelledFrame], list[LabelledFrame]]:
    """(train, held out): about ``fraction`` of the good and of the bad frames kept aside,
    whole scans at a time (:attr:`LabelledFrame.scan`), chosen by ``seed``. A scan counts
    as good when most of its frames are; at least one scan of each kind stays in training,
    and none is kept aside from a kind with a single scan."""
    rng = np.random.default_rng([seed, 1717])
    scans = _scan_indices(frames)
    scan_good = _scan_majority(np.array([frame.label == GOOD for frame in frames]), scans)
    train: list[LabelledFrame] = []
    held: list[LabelledFrame] = []
    for is_good in (True, False):
        kind = [[frames[int(i)] for i in np.flatnonzero(scans == scan)]
                for scan in np.flatnonzero(scan_good == is_good)]
        target = round(sum(map(len, kind)) * fraction)
        taken = 0
        for position, index in enumerate(rng.permutation(len(kind))):
            if taken < target and position < len(kind) - 1:
                held += kind[index]
                taken += len(kind[index])
            else:
                train += kind[index]
    return train, held


def _scan_indices(frames: Sequence[LabelledFrame]) -> np.ndarray:
    """Per frame, the index of its scan (:attr:`LabelledFrame.scan`), numbered in order of
    first appearance."""
    index: dict[str, int] = {}
    return np.array([index.setdefault(frame.scan, len(index)) for frame in frames], dtype=int)


def _scan_majority(good: np.ndarray, scans: np.ndarray) -> np.ndarray:
    """Per scan (index), whether most of its frames are good (a tie counts as bad)."""
    count = np.bincount(scans)
    return 2 * np.bincount(scans, weights=good.astype(float)) > count


def _class_weights(labels: np.ndarray) -> torch.Tensor:
    """Per-class loss weights: good and bad examples weigh the same in total."""
    good = labels == CLASSES.index(GOOD)
    weights = np.zeros(len(CLASSES))
    for present in np.unique(labels):
        kind = good if present == CLASSES.index(GOOD) else ~good
        weights[present] = 0.5 / max(kind.mean(), 1e-9)
    return torch.tensor(weights, dtype=torch.float32)


@dataclass(frozen=True)
class WindowBank:
    """The network inputs to learn from: every frame's windows as judged in operation, plus
    :attr:`FinetuneConfig.views` augmented windows of it, with their owners."""

    #: ``(n, 64, 64)`` prepared windows.
    windows: np.ndarray = field(repr=False)
    #: Class index of each window (its frame's label).
    classes: np.ndarray
    #: Index of the frame each window comes from.
    owners: np.ndarray
    #: True for the windows the frame is judged on in operation (False: augmented views).
    in_operation: np.ndarray
    #: Class index of each frame.
    frame_classes: np.ndarray
    #: Index of the scan each frame belongs to (:attr:`LabelledFrame.scan`).
    frame_scans: np.ndarray


def window_bank(frames: Sequence[LabelledFrame], config: FinetuneConfig) -> WindowBank:
    """The :class:`WindowBank` of ``frames`` (augmentation seeded by ``config.seed``)."""
    rng = np.random.default_rng([config.seed, 2929])
    images = [frame.image for frame in frames]
    sizes = np.array([frame.scan_size_m for frame in frames])
    classes = np.array([CLASSES.index(frame.label) for frame in frames])
    operation = processing.prepare_batch(images, sizes)
    windows = [*operation]
    owners = [np.full(len(w), i) for i, w in enumerate(operation)]
    for _ in range(config.views):
        windows.append(augment_batch(images, sizes, rng, config.augmentation))
        owners.append(np.arange(len(frames)))
    owner = np.concatenate(owners)
    n_operation = sum(len(w) for w in operation)
    return WindowBank(np.concatenate(windows), classes[owner], owner,
                      np.arange(len(owner)) < n_operation, classes, _scan_indices(frames))


@dataclass(frozen=True)
class Finetuned:
    """A fine-tuned network and how hard it was pulled back towards its base."""

    model: TipNet
    anchor: float
    #: The mean held-out loss of each anchor tried (``{}`` when none was cross-validated).
    cross_validation: dict[float, float]


def finetune(base: TipNet, frames: Sequence[LabelledFrame], config: FinetuneConfig
             ) -> Finetuned:
    """A copy of ``base`` with its last layer fine-tuned on ``frames`` (see the module
    docstring); ``base`` is left as it was. Deterministic for a seed and torch version."""
    frames = trainable(frames)
    check_classes(frames)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(config.threads)
        return _finetune(base, frames, config)
    finally:
        torch.set_num_threads(threads)


def _finetune(base: TipNet, frames: Sequence[LabelledFrame], config: FinetuneConfig
              ) -> Finetuned:
    torch.manual_seed(config.seed)
    bank = window_bank(frames, config)
    model = copy.deepcopy(base).eval()
    features = torch.from_numpy(window_outputs(inference_copy(model), bank.windows)[1])
    scores: dict[float, float] = {}
    anchor = config.anchor
    if anchor is None:
        anchor, scores = choose_anchor(model, features, bank, config)
    _train_head(model.head, features, torch.from_numpy(bank.classes), anchor, config)
    return Finetuned(model.eval(), anchor, scores)


def choose_anchor(model: TipNet, features: torch.Tensor, bank: WindowBank,
                  config: FinetuneConfig) -> tuple[float, dict[float, float]]:
    """The anchor of :data:`ANCHORS` with the lowest cross-validated loss, and each one's
    loss. The training frames are split into stratified, seeded folds of whole scans (at
    most ``config.folds``, at most the scans of the rarer kind); for each fold a head
    trained on the others judges its frames as in operation (their operation windows, the
    base temperature), and the loss is the class-balanced cross-entropy of good versus bad.
    With a kind of one scan, :data:`FALLBACK_ANCHOR` and no losses."""
    good = bank.frame_classes == CLASSES.index(GOOD)
    scan_good = _scan_majority(good, bank.frame_scans)
    folds = min(config.folds, int(scan_good.sum()), int((~scan_good).sum()))
    if folds < 2:
        return FALLBACK_ANCHOR, {}
    fold_of = _stratified_folds(scan_good, folds, config.seed)[bank.frame_scans]
    temperature = float(model.temperature)  # type: ignore[arg-type]
    classes = torch.from_numpy(bank.classes)
    losses: dict[float, list[float]] = {anchor: [] for anchor in ANCHORS}
    for fold in range(folds):
        train_rows = torch.from_numpy(fold_of[bank.owners] != fold)
        judged = (fold_of[bank.owners] == fold) & bank.in_operation
        train_features, train_classes = features[train_rows], classes[train_rows]
        judged_features = features[torch.from_numpy(judged)]
        owners = bank.owners[judged]
        held = np.unique(owners)
        counts = [int((owners == i).sum()) for i in held]
        for anchor in ANCHORS:
            head = copy.deepcopy(model.head)
            _train_head(head, train_features, train_classes, anchor, config)
            with torch.no_grad():
                logits = head(judged_features).numpy()
            p_good = calibrate(frame_scores(logits, counts), temperature)[
                :, CLASSES.index(GOOD)]
            losses[anchor].append(_balanced_log_loss(p_good, good[held]))
    mean = {anchor: float(np.mean(values)) for anchor, values in losses.items()}
    return min(ANCHORS, key=lambda anchor: mean[anchor]), mean


def _stratified_folds(good: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """A fold index per item (scan): each kind dealt round-robin in a seeded order."""
    rng = np.random.default_rng([seed, 4343])
    fold_of = np.zeros(len(good), dtype=int)
    for kind in (good, ~good):
        members = np.flatnonzero(kind)[rng.permutation(int(kind.sum()))]
        fold_of[members] = np.arange(len(members)) % folds
    return fold_of


def _balanced_log_loss(p_good: np.ndarray, is_good: np.ndarray) -> float:
    """Cross-entropy of p(good), good and bad frames weighing the same."""
    p = np.clip(p_good, 1e-6, 1 - 1e-6)
    parts = [-np.log(p[is_good]).mean() if is_good.any() else None,
             -np.log(1 - p[~is_good]).mean() if (~is_good).any() else None]
    return float(np.mean([part for part in parts if part is not None]))


def _train_head(head: nn.Linear, features: torch.Tensor, targets: torch.Tensor,
                anchor: float, config: FinetuneConfig) -> None:
    """Train ``head`` in place: class-balanced cross-entropy plus ``anchor`` times the
    squared distance to its starting weights, full-batch AdamW for ``config.epochs``."""
    anchors = [p.detach().clone() for p in head.parameters()]
    loss_fn = nn.CrossEntropyLoss(weight=_class_weights(targets.numpy()))
    optimiser = torch.optim.AdamW(head.parameters(), lr=config.learning_rate,
                                  weight_decay=config.weight_decay)
    for _ in range(config.epochs):
        loss = loss_fn(head(features), targets)
        pull = sum(((p - a) ** 2).sum() for p, a in zip(head.parameters(), anchors,
                                                         strict=True))
        loss = loss + anchor * pull
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()


def base_weight_file(weights: Path | None = None) -> Path:
    """The weight file a fine-tune starts from: ``weights``, or for a gate file the
    generalist it names, or by default the shipped generalist."""
    if weights is None:
        return GENERALIST
    if weights.suffix == gate.SUFFIX:
        return weights.parent / gate.GateFile.read(weights).generalist
    return weights


def base_network(weights: Path | None = None) -> TipNet:
    """The network of :func:`base_weight_file`, to fine-tune from; read with
    ``torch.load(weights_only=True)``."""
    source = base_weight_file(weights)
    state = torch.load(io.BytesIO(source.read_bytes()), map_location="cpu", weights_only=True)
    return TipNet.from_state_dict(state)


def p_good(assessor: FrameAssessor, frames: Sequence[LabelledFrame]) -> np.ndarray:
    """The assessor's p(good) of each frame."""
    if not frames:
        return np.zeros(0)
    return np.array([a.p_good for a in assessor.assess_batch(
        [frame.image for frame in frames], [frame.scan_size_m for frame in frames])])


def good_versus_bad(assessor: FrameAssessor, frames: Sequence[LabelledFrame]) -> Figures:
    """Balanced accuracy, AUC and the rest of the real set's figures on ``frames``."""
    return figures([frame.label for frame in frames], p_good(assessor, frames))


# -- labels and frames from Tiled or a file ---------------------------------------------------


def labels_from_file(path: Path) -> list[FrameLabel]:
    """Labels from a JSON list of ``{"run_uid", "seq_num", "label"}`` objects or a CSV file
    with those columns, each with an optional ``scan`` (images of one scan, such as crops,
    share it); :class:`FinetuneError` naming the first bad entry."""
    try:
        text = path.read_text()
    except OSError as err:
        raise FinetuneError(f"cannot read the labels file {path}: {err.strerror}") from None
    if path.suffix.lower() == ".json":
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as err:
            raise FinetuneError(f"{path} is not JSON: {err}") from None
        if not isinstance(rows, list):
            raise FinetuneError(f"{path}: expected a JSON list of labels")
    else:
        rows = list(csv.DictReader(text.splitlines()))
    labels = []
    for number, row in enumerate(rows, start=1):
        try:
            labels.append(FrameLabel(str(row["run_uid"]), int(row["seq_num"]),
                                     label_class(str(row["label"]).strip()),
                                     _scan_name(row.get("scan"))))
        except (KeyError, TypeError, ValueError) as err:
            raise FinetuneError(f"{path}: label {number} ({row!r}): needs run_uid, seq_num "
                                f"and label, and optionally scan ({err})") from None
    return labels


def _scan_name(value: object) -> str:
    """A labels file's ``scan`` entry as a name: absent or empty means none; a name is a
    string or a whole number (a CSV column leaves it a string)."""
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"scan must be a name or a number, not {value!r}")
    return str(value).strip()


def frames_from_tiled(client: Any, labels: Sequence[FrameLabel]) -> list[LabelledFrame]:
    """The labelled frames, read from Tiled (each run's images once), in label order;
    :class:`FinetuneError` if a run or an image a label names is not there."""
    by_run: dict[str, dict[int, tuple[np.ndarray, float]]] = {}
    frames = []
    for label in labels:
        if label.run_uid not in by_run:
            by_run[label.run_uid] = _run_frames(client, label.run_uid)
        frame = by_run[label.run_uid].get(label.seq_num)
        if frame is None:
            raise FinetuneError(f"run {label.run_uid} has no image with seq_num "
                                f"{label.seq_num}")
        frames.append(LabelledFrame(f"{label.run_uid}/{label.seq_num}", frame[0], frame[1],
                                    str(label.label), group=label.scan))
    return frames


def _run_frames(client: Any, run_uid: str) -> dict[int, tuple[np.ndarray, float]]:
    """seq_num -> (image, scan size) of every frame of a stored run."""
    try:
        run = client[run_uid]
    except KeyError:
        raise FinetuneError(f"no run {run_uid!r} in Tiled") from None
    table = read_stream_table(run, schema.PRIMARY)
    if table is None or schema.SCAN_SIZE not in table:
        raise FinetuneError(f"run {run_uid} holds no images")
    stack = read_image_stream(run)
    sizes = table[schema.SCAN_SIZE]
    return {int(s): (image, float(sizes[int(s)]))
            for s, image in zip(stack.seq_num, stack.images, strict=True)}


# -- the command's whole job -------------------------------------------------------------------


@dataclass(frozen=True)
class LabelSource:
    """Where the labels came from, for the model card."""

    tiled_uri: str
    sessions: tuple[str, ...]
    label_runs: tuple[str, ...]
    labels_file: str | None = None
    #: Labels given before any was dropped (unclear, over ``--max-labels``).
    given: int = 0


@dataclass(frozen=True)
class FinetuneResult:
    """The written weights, their id and the figures on the held-out labels."""

    weights: Path
    card: Path
    model_id: str
    before: Figures
    after: Figures
    n_train: int
    n_held_out: int
    wall_time_s: float


def finetune_and_write(base_weights: Path | None, frames: Sequence[LabelledFrame],
                       config: FinetuneConfig, out: Path, source: LabelSource,
                       command: str) -> FinetuneResult:
    """Split, fine-tune, measure before and after on the held-out labels, write the weights
    and their model card (``<stem>.card.json``, ``<STEM>_CARD.md``) beside ``out``.

    ``base_weights`` is the assessor given as the base (default: the shipped gate); "before"
    is that assessor as it judges, and the network fine-tuned is :func:`base_weight_file`.
    Checks come first: :class:`FinetuneError` before anything is written.
    """
    started = time.perf_counter()
    usable = trainable(frames)
    check_classes(usable)
    train_frames, held = split_held_out(usable, config.held_out_fraction, config.seed)
    check_classes(train_frames)
    given = load_assessor(base_weights, calibrated=False)
    network_file = base_weight_file(base_weights)
    result = finetune(base_network(base_weights), train_frames, config)
    weights = serialise(result.model)
    model_id = model_id_for(MODEL_NAME, weights)
    tuned = TipNetAssessor(result.model, model_id)
    before, after = good_versus_bad(given, held), good_versus_bad(tuned, held)
    wall = time.perf_counter() - started
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(weights)
    network_bytes = network_file.read_bytes()
    base = {"model_id": given.model_id, "file": str(base_weights or "shipped"),
            "network": model_id_for(MODEL_NAME, network_bytes),
            "network_file": network_file.name,
            "network_sha256": hashlib.sha256(network_bytes).hexdigest()}
    card = _card(base, weights, model_id, out, config, result, source, command,
                 train_frames, held, before, after, wall)
    card_path = write_card(card, out, render_markdown)
    return FinetuneResult(out, card_path, model_id, before, after, len(train_frames),
                          len(held), wall)


def _counts(frames: Sequence[LabelledFrame]) -> dict[str, int]:
    counted = Counter(frame.label for frame in frames)
    return {c: counted[c] for c in CLASSES if counted[c]}


def _card(base: dict[str, Any], weights: bytes, model_id: str, out: Path,
          config: FinetuneConfig, result: Finetuned, source: LabelSource, command: str,
          train_frames: Sequence[LabelledFrame], held: Sequence[LabelledFrame],
          before: Figures, after: Figures, wall: float) -> dict[str, Any]:
    how = ("given" if config.anchor is not None else
           "the lowest cross-validated loss" if result.cross_validation else
           "the fallback: too few frames of one kind to cross-validate")
    return {
        "name": "tipnet assessor, fine-tuned from labels",
        **weight_file_fields(model_id, out, weights),
        "classes": list(CLASSES),
        "base": base,
        "data": {
            "tiled_uri": source.tiled_uri,
            "sessions": list(source.sessions),
            "label_runs": list(source.label_runs),
            "labels_file": source.labels_file,
            "labels_given": source.given,
            "train_counts": _counts(train_frames),
            "held_out_counts": _counts(held),
            "train_scans": len({frame.scan for frame in train_frames}),
            "held_out_scans": len({frame.scan for frame in held}),
            "train_images": [frame.key for frame in train_frames],
            "held_out_images": [frame.key for frame in held],
        },
        "training": {
            "command": command,
            "seed": config.seed,
            "config": asdict(config),
            "method": f"the last layer of {base['network_file']} only, from its weights; "
                      "class-balanced cross-entropy on the frames' windows and augmented "
                      f"views; L2-SP pull to the base head of strength {result.anchor:g} "
                      f"({how}); base temperature kept",
            "anchor": result.anchor,
            "cross_validation": {f"{anchor:g}": round(loss, 4)
                                 for anchor, loss in result.cross_validation.items()},
            "wall_time_s": round(wall, 1),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "held_out": {"before": asdict(before), "after": asdict(after)},
        "notes": ["The unsure calibration of the base weights is not carried over: these "
                  "weights abstain from nothing until `spm-bluesky train unsure` calibrates "
                  "them.",
                  "'before' is the base assessor as given (by default the shipped gate, "
                  "both networks); 'after' is the fine-tuned network alone.",
                  "Figures on the held-out labels of the same images' source: few images, "
                  "wide uncertainty."],
    }


def _figure_row(name: str, figures: Figures) -> str:
    return (f"| {name} | {figures.n_good} | {figures.n_bad} | {figures.balanced_accuracy:.3f} "
            f"| {figures.auc:.3f} | {figures.mean_p_good_good:.3f} | "
            f"{figures.mean_p_good_bad:.3f} |")


def render_markdown(card: dict[str, Any]) -> str:
    """A fine-tuned assessor's card as Markdown: identity, data, command, held-out figures."""
    data, training, held = card["data"], card["training"], card["held_out"]
    lines = [
        *card_header(card, "`spm-bluesky train assessor --from-tiled`"),
        f"| base | `{card['base']['model_id']}` ({card['base']['file']}); its network "
        f"`{card['base']['network']}` ({card['base']['network_file']}) fine-tuned |",
        f"| Tiled | {data['tiled_uri']} |",
        f"| sessions | {', '.join(data['sessions']) or '-'} |",
        f"| label runs | {', '.join(data['label_runs']) or '-'} |",
        f"| labels file | {data['labels_file'] or '-'} |",
        f"| trained on | {json.dumps(data['train_counts'])}, from "
        f"{data['train_scans']} scans |",
        f"| held out | {json.dumps(data['held_out_counts'])}, from "
        f"{data['held_out_scans']} scans |",
        "",
        "## Training",
        "",
        f"    {training['command']}",
        "",
        f"{training['method']}; seed {training['seed']}; {training['wall_time_s']:.0f} s.",
        "",
        "## Held-out labels: good versus bad",
        "",
        "| model | good | bad | balanced accuracy | AUC | mean p(good) good | bad |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in ("before", "after"):
        lines.append(_figure_row(name, Figures(**held[name])))
    lines += ["", "## Limitations", ""] + [f"- {note}" for note in card["notes"]]
    return "\n".join(lines) + "\n"
