"""Training the assessor: twin and synthetic data, augmentation, AdamW, temperature scaling,
the unsure calibration, model card.

``spm-bluesky train assessor`` runs :func:`train`. Everything random derives from the seed
(twin images, weight init, shuffling, augmentation, dropout) and torch runs with
deterministic algorithms, so the same command on the same machine (CPU), torch version and
thread count rewrites the shipped weights bit for bit; another CPU renders the same images
but trains to other bits.
"""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from spm_bluesky.domain import processing
from spm_bluesky.ml.assessor import data as ds
from spm_bluesky.ml.assessor.assessor import (
    MODEL_NAME,
    TipNetAssessor,
    frame_scores,
    load_network,
    serialise,
    window_logits,
)
from spm_bluesky.ml.assessor.augment import augment_batch
from spm_bluesky.ml.assessor.config import GoodWeightOn, TrainConfig
from spm_bluesky.ml.assessor.evaluation import evaluate_on, held_out_randomisation, synth_figures
from spm_bluesky.ml.assessor.model import TipNet, stages_for
from spm_bluesky.ml.assessor.synth import generate as synth
from spm_bluesky.ml.assessor.synth.config import FAMILY_NAMES
from spm_bluesky.ml.assessor.unsure import UnsureCalibration, calibrate_unsure
from spm_bluesky.ml.card import (
    WEIGHTS,
    card_paths,
    model_id_for,
    weight_file_fields,
    write_card,
)
from spm_bluesky.protocols import CLASSES, GOOD

#: Batches smaller than this are skipped (batch norm needs a few samples).
MIN_BATCH = 8
#: A batch's loss from its logits, labels and which of its frames are synthetic.
Loss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
#: Limitations recorded in the model card.
NOTES = [
    "Trained on the digital twin only (Ag(100) with MgPc, 5 to 20 nm frames, 64 or 128 px) "
    "with domain randomisation and augmentation; its figures on real STM images are in the "
    "card's real-set section, written by spm-bluesky eval assessor --real --card --weights "
    "FILE.",
    "An unstable tip is recognised by its streaks and flicker: a frame in which it did not "
    "flip (about one in sixteen at 64 px) looks good and is usually called good.",
    "With no molecule in view (bare terrace) a double tip or an adsorbate cannot show; such "
    "frames get a hedged p(good).",
    "Frames over 20 nm are judged on their central 20 nm; frames coarser than about "
    "0.3 nm per pixel lose the detail a double tip shows in.",
]
#: The first note instead, when synthetic frames were trained on too.
SYNTH_NOTE = ("Trained on the digital twin and on synthetic frames (eight surface families, "
              "real-looking tip defects, instrument noise; spm_bluesky.ml.assessor.synth); "
              "its figures on real STM images are in the card's real-set section, written "
              "by spm-bluesky eval assessor --real --card --weights FILE.")


@dataclass(frozen=True)
class TrainedAssessor:
    """Where the weights went, their id and the figures for the card."""

    weights: Path
    card: Path
    model_id: str
    wall_time_s: float
    temperature: float
    validation_nll: float


def fit_temperature(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """The temperature minimising the validation negative log-likelihood of
    ``softmax(scores / T)``, and that NLL.

    A log-spaced search from 1/8 to 8 (0.5 % steps): one parameter, no optimiser state,
    the same answer every time.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    best_t, best_nll = 1.0, math.inf
    for t in np.exp(np.linspace(math.log(1 / 8), math.log(8), 833)):
        scaled = scores / t
        top = scaled.max(axis=1, keepdims=True)
        log_z = top[:, 0] + np.log(np.exp(scaled - top).sum(axis=1))
        nll = float(np.mean(log_z - scaled[np.arange(len(labels)), labels]))
        if nll < best_nll:
            best_t, best_nll = float(t), nll
    return best_t, best_nll


def loss_for(config: TrainConfig) -> Loss:
    """Cross-entropy of a batch, each good frame's loss weighted by ``config.good_weight``
    (with ``good_weight_on`` synthetic, only the synthetic ones); unweighted at 1, as the
    shipped weights were trained, bit for bit. The loss is called with the logits, the labels
    and which frames are synthetic."""
    if config.good_weight == 1.0:
        plain = nn.CrossEntropyLoss()
        return lambda logits, labels, synthetic: plain(logits, labels)
    good = CLASSES.index(GOOD)
    only_synthetic = config.good_weight_on is GoodWeightOn.SYNTHETIC

    def weighted(logits: torch.Tensor, labels: torch.Tensor,
                 synthetic: torch.Tensor) -> torch.Tensor:
        chosen = labels == good
        if only_synthetic:
            chosen &= synthetic
        weights = torch.where(chosen, config.good_weight, 1.0)
        per_frame = nn.functional.cross_entropy(logits, labels, reduction="none")
        return (weights * per_frame).sum() / weights.sum()

    return weighted


def _flatten(*datasets: ds.Dataset) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    parts = [d for d in datasets if len(d)]
    images = [image for d in parts for group in d.groups for image in group.images]
    sizes = np.concatenate([d.column("scan_size") for d in parts])
    labels = np.concatenate([d.column("label") for d in parts]).astype(np.int64)
    return images, sizes, labels


def _synth_set(split: ds.SeedRange, base: int, count: int, config: TrainConfig,
               data_dir: Path | str | None) -> ds.Dataset:
    if count == 0:
        return ds.Dataset([], {"seeds": [], "class_counts": {}})
    return synth.cached(split, base, count, data_dir, config.synth, config.workers)


def prepared(dataset: ds.Dataset) -> list[np.ndarray]:
    """Each frame's network input (windows) exactly as in operation (no augmentation)."""
    return [x for g in dataset.groups for x in processing.prepare_batch(g.images, g.scan_sizes)]


def scores_on(model: TipNet, frames: list[np.ndarray]) -> np.ndarray:
    """Uncalibrated per-frame scores (mean window log-softmax) for prepared frames."""
    logits = window_logits(model, np.concatenate(frames))
    return frame_scores(logits, [len(f) for f in frames])


def train(
    config: TrainConfig,
    out: Path | str = WEIGHTS,
    data_dir: Path | str | None = None,
    progress: bool = True,
) -> TrainedAssessor:
    """Train, calibrate and evaluate the assessor; write the weights and the model card.

    ``out`` is the weight file; the card goes beside it (``<stem>.card.json`` and
    ``<STEM>_CARD.md``). ``data_dir`` keeps the rendered twin sets as .npz shards for reuse.
    """
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        torch.set_num_threads(config.threads)
        torch.use_deterministic_algorithms(True)
        return _train(config, Path(out), data_dir, progress)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _train(config: TrainConfig, out: Path, data_dir: Path | str | None,
           progress: bool) -> TrainedAssessor:
    from tqdm import tqdm

    started = time.perf_counter()
    torch.manual_seed(config.seed)
    rng = np.random.default_rng([config.seed, 303])

    train_set = ds.cached(ds.TRAIN, config.seed, config.images, data_dir,
                          config.randomisation, config.workers, progress)
    val_set = ds.cached(ds.VALIDATION, config.seed, config.validation_images, data_dir,
                        config.randomisation, config.workers, progress)
    synth_train = _synth_set(ds.TRAIN, config.seed, config.synth_images, config, data_dir)
    synth_val = _synth_set(ds.VALIDATION, config.seed, config.synth_validation_images, config,
                           data_dir)
    images, sizes, labels = _flatten(train_set, synth_train)
    is_synthetic = np.arange(len(images)) >= len(images) - len(synth_train)
    val_inputs = prepared(val_set) + prepared(synth_val)
    val_labels = _flatten(val_set, synth_val)[2]

    # torch's stubs lack Module.to's memory_format keyword (torch accepts it).
    stages = stages_for(config.width)
    model = TipNet(stages, robust=config.scale_free).to(  # type: ignore[call-overload]
        memory_format=torch.channels_last)
    augmentation = replace(config.augmentation, relative_heights=config.scale_free)
    steps_per_epoch = math.ceil(len(images) / config.batch_size)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.learning_rate,
                                  weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=config.learning_rate, total_steps=config.epochs * steps_per_epoch,
        pct_start=0.15)
    loss_fn = loss_for(config)
    bar = tqdm(total=config.epochs * steps_per_epoch, desc="training assessor", unit="batch",
               disable=not progress)
    val_accuracy = float("nan")
    for epoch in range(config.epochs):
        model.train()
        order = rng.permutation(len(images))
        running, seen, correct = 0.0, 0, 0
        for step in range(steps_per_epoch):
            index = order[step * config.batch_size:(step + 1) * config.batch_size]
            bar.update()
            if len(index) < MIN_BATCH:
                schedule.step()
                continue
            x = torch.from_numpy(augment_batch([images[i] for i in index], sizes[index], rng,
                                               augmentation)).unsqueeze(1)
            x = x.contiguous(memory_format=torch.channels_last)
            y = torch.from_numpy(labels[index])
            logits = model(x)
            loss = loss_fn(logits, y, torch.from_numpy(is_synthetic[index]))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            running += float(loss.detach()) * len(index)
            seen += len(index)
            correct += int((logits.argmax(1) == y).sum())
            bar.set_postfix(epoch=epoch + 1, loss=f"{running / seen:.3f}",
                            acc=f"{correct / seen:.3f}", val_acc=f"{val_accuracy:.3f}")
        val_accuracy = float(np.mean(scores_on(model, val_inputs).argmax(1) == val_labels))
        bar.set_postfix(epoch=epoch + 1, loss=f"{running / max(seen, 1):.3f}",
                        acc=f"{correct / max(seen, 1):.3f}", val_acc=f"{val_accuracy:.3f}")
    bar.close()

    model = model.to(memory_format=torch.contiguous_format).eval()
    temperature, val_nll = fit_temperature(scores_on(model, val_inputs), val_labels)
    model.temperature.fill_(temperature)
    weights = serialise(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(weights)
    model_id = model_id_for(MODEL_NAME, weights)
    train_seconds = time.perf_counter() - started

    held_out = ds.cached(ds.HELD_OUT, config.eval_base, config.eval_images, data_dir,
                         held_out_randomisation(config.randomisation), config.workers,
                         progress)
    trained = TipNetAssessor(model, model_id)
    evaluation = evaluate_on(trained, held_out)
    # Every family, also one left out of training: the card then shows how it generalises.
    every_family = replace(config, synth=replace(config.synth, families=FAMILY_NAMES))
    synth_held_out = _synth_set(ds.HELD_OUT, config.eval_base, config.synth_eval_images,
                                every_family, data_dir)
    synthetic = synth_figures(trained, synth_held_out) if len(synth_held_out) else {}
    # The abstention: class means and covariance from the frames trained on, the threshold
    # from the validation frames (written beside the weights).
    unsure = calibrate_unsure(
        trained, ds.Dataset(train_set.groups + synth_train.groups, train_set.manifest),
        ds.Dataset(val_set.groups + synth_val.groups, val_set.manifest), out)
    wall = time.perf_counter() - started
    card = {
        "name": "tipnet assessor",
        **weight_file_fields(model_id, out, weights),
        "classes": list(CLASSES),
        "architecture": {"class": "spm_bluesky.ml.assessor.model.TipNet",
                         "stages": [list(stage) for stage in stages],
                         "parameters": sum(p.numel() for p in model.parameters())},
        "input": "square frame in metres, 8 to 1024 px; processing.prepare: 64 px windows at "
                 "10 nm / 64 px (one up to 10 nm, four up to 20 nm, central 20 nm of bigger "
                 "frames), robust plane subtraction, clip(h/1A - 1, -1.5, 1.5); "
                 + ("in the network, each window minus its median over half its 1-99 % "
                    "range, clipped to +-4; " if config.scale_free else "")
                 + "frame score = mean window log-softmax, calibrated by temperature",
        "calibration": {"method": "temperature scaling on the validation split",
                        "temperature": temperature, "validation_nll": val_nll,
                        "validation_accuracy": val_accuracy},
        "training": {
            "command": command_for(config, out),
            "config": asdict(config),
            "train_seeds": train_set.manifest["seeds"],
            "synth_train_seeds": synth_train.manifest["seeds"],
            "synth_validation_seeds": synth_val.manifest["seeds"],
            "validation_seeds": val_set.manifest["seeds"],
            "train_class_counts": train_set.manifest["class_counts"],
            "train_pixel_counts": train_set.manifest["pixel_counts"],
            "wall_time_s": round(train_seconds, 1),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
        },
        "notes": [SYNTH_NOTE, *NOTES[1:]] if config.synth_images else NOTES,
        "held_out": {
            "seed_range": held_out.manifest["seed_range"],
            "seeds": held_out.manifest["seeds"],
            "class_counts": held_out.manifest["class_counts"],
            "pixel_counts": held_out.manifest["pixel_counts"],
            "command": f"spm-bluesky eval assessor --weights {out} --seed "
                       f"{config.eval_base} --images {config.eval_images}",
            "set_aside": {"no_molecule": evaluation.no_molecule,
                          "no_flip": evaluation.no_flip},
            "metrics": evaluation.observable.to_json(),
            "all_frames": evaluation.all_frames.to_json(),
        },
        "unsure": unsure.summary(),
        "synthetic_held_out": {
            "seeds": synth_held_out.manifest["seeds"],
            "good_versus_bad": synthetic,
        },
    }
    card_path = write_card(card, out)
    return TrainedAssessor(out, card_path, model_id, wall, temperature, val_nll)


def calibrate_weights(weights: Path | str = WEIGHTS, seed: int = 0, images: int = 3_000,
                      validation_images: int = 3_000, data_dir: Path | str | None = None,
                      workers: int = 2, progress: bool = True) -> UnsureCalibration:
    """Calibrate the unsure score of existing weights, as training does for new ones.

    The class statistics come from ``images`` twin training frames of ``seed``, the
    threshold from ``validation_images`` validation frames; the calibration is written
    beside the weights and recorded in their model card, if it has one (with the command
    that regenerates it: ``spm-bluesky train unsure``).
    """
    weights = Path(weights)
    assessor = load_network(weights, calibrated=False)
    randomisation = TrainConfig().randomisation
    fit_set = ds.cached(ds.TRAIN, seed, images, data_dir, randomisation, workers, progress)
    threshold_set = ds.cached(ds.VALIDATION, seed, validation_images, data_dir,
                              randomisation, workers, progress)
    calibration = calibrate_unsure(assessor, fit_set, threshold_set, weights)
    card_path = card_paths(weights)[0]
    if card_path.is_file():
        card = json.loads(card_path.read_text())
        command = (f"spm-bluesky train unsure --seed {seed} --images {images} "
                   f"--validation-images {validation_images}")
        if weights.resolve() != WEIGHTS.resolve():
            command += f" --weights {weights}"
        card["unsure"] = {**calibration.summary(), "command": command}
        write_card(card, weights)
    return calibration


def command_for(config: TrainConfig, out: Path) -> str:
    """The command line that reproduces these weights."""
    command = (f"spm-bluesky train assessor --seed {config.seed} --images {config.images} "
               f"--epochs {config.epochs}")
    if config.synth_images:
        command += f" --synth-images {config.synth_images}"
    if config.scale_free:
        command += " --scale-free"
    if config.good_weight != 1.0:
        command += f" --good-weight {config.good_weight:g}"
        if config.good_weight_on is not GoodWeightOn.ALL:
            command += f" --good-weight-on {config.good_weight_on.value}"
    if config.width != 1.0:
        command += f" --width {config.width:g}"
    left_out = [f for f in FAMILY_NAMES if f not in config.synth.families]
    if left_out:
        command += "".join(f" --leave-out {f}" for f in left_out)
    if config.synth.visible_ghosts:
        command += " --visible-ghosts"
    if out.resolve() != WEIGHTS.resolve():
        command += f" --out {out}"
    return command


