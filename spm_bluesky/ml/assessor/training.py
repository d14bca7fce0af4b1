"""Training the assessor: twin data, augmentation, AdamW, temperature scaling, model card.

``spm-bluesky train assessor`` runs :func:`train`. Everything random derives from the seed
(twin images, weight init, shuffling, augmentation, dropout) and torch runs with
deterministic algorithms, so the same command on the same torch version and thread count
rewrites the shipped weights bit for bit.
"""

from __future__ import annotations

import hashlib
import math
import platform
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
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
    serialise,
    window_logits,
)
from spm_bluesky.ml.assessor.augment import augment_batch
from spm_bluesky.ml.assessor.config import TrainConfig
from spm_bluesky.ml.assessor.evaluation import evaluate_on, held_out_randomisation
from spm_bluesky.ml.assessor.model import STAGES, TipNet
from spm_bluesky.ml.card import WEIGHTS, model_id_for, write_card
from spm_bluesky.protocols import CLASSES

#: Batches smaller than this are skipped (batch norm needs a few samples).
MIN_BATCH = 8
#: Limitations recorded in the model card.
NOTES = [
    "Trained on the digital twin only (Ag(100) with MgPc, 5 to 20 nm frames, 64 or 128 px) "
    "with domain randomisation and augmentation; not yet measured on real STM images.",
    "An unstable tip is recognised by its streaks and flicker: a frame in which it did not "
    "flip (about one in sixteen at 64 px) looks good and is usually called good.",
    "With no molecule in view (bare terrace) a double tip or an adsorbate cannot show; such "
    "frames get a hedged p(good).",
    "Frames over 20 nm are judged on their central 20 nm; frames coarser than about "
    "0.3 nm per pixel lose the detail a double tip shows in.",
]


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


def _flatten(dataset: ds.Dataset) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    images = [image for group in dataset.groups for image in group.images]
    return images, dataset.column("scan_size"), dataset.column("label").astype(np.int64)


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
    images, sizes, labels = _flatten(train_set)
    val_inputs = prepared(val_set)
    val_labels = val_set.column("label").astype(np.int64)

    # torch's stubs lack Module.to's memory_format keyword (torch accepts it).
    model = TipNet().to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    steps_per_epoch = math.ceil(len(images) / config.batch_size)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.learning_rate,
                                  weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=config.learning_rate, total_steps=config.epochs * steps_per_epoch,
        pct_start=0.15)
    loss_fn = nn.CrossEntropyLoss()
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
                                               config.augmentation)).unsqueeze(1)
            x = x.contiguous(memory_format=torch.channels_last)
            y = torch.from_numpy(labels[index])
            logits = model(x)
            loss = loss_fn(logits, y)
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
    evaluation = evaluate_on(TipNetAssessor(model, model_id), held_out)
    wall = time.perf_counter() - started
    card = {
        "name": "tipnet assessor",
        "model_id": model_id,
        "file": out.name,
        "sha256": hashlib.sha256(weights).hexdigest(),
        "size_bytes": len(weights),
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "classes": list(CLASSES),
        "architecture": {"class": "spm_bluesky.ml.assessor.model.TipNet",
                         "stages": [list(stage) for stage in STAGES],
                         "parameters": sum(p.numel() for p in model.parameters())},
        "input": "square frame in metres, 8 to 1024 px; processing.prepare: 64 px windows at "
                 "10 nm / 64 px (one up to 10 nm, four up to 20 nm, central 20 nm of bigger "
                 "frames), robust plane subtraction, clip(h/1A - 1, -1.5, 1.5); frame score = "
                 "mean window log-softmax, calibrated by temperature",
        "calibration": {"method": "temperature scaling on the validation split",
                        "temperature": temperature, "validation_nll": val_nll,
                        "validation_accuracy": val_accuracy},
        "training": {
            "command": command_for(config, out),
            "config": asdict(config),
            "train_seeds": train_set.manifest["seeds"],
            "validation_seeds": val_set.manifest["seeds"],
            "train_class_counts": train_set.manifest["class_counts"],
            "train_pixel_counts": train_set.manifest["pixel_counts"],
            "wall_time_s": round(train_seconds, 1),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
        },
        "notes": NOTES,
        "held_out": {
            "seed_range": held_out.manifest["seed_range"],
            "seeds": held_out.manifest["seeds"],
            "class_counts": held_out.manifest["class_counts"],
            "pixel_counts": held_out.manifest["pixel_counts"],
            "command": f"spm-bluesky eval assessor --seed {config.eval_base} "
                       f"--images {config.eval_images}",
            "set_aside": {"no_molecule": evaluation.no_molecule,
                          "no_flip": evaluation.no_flip},
            "metrics": evaluation.observable.to_json(),
            "all_frames": evaluation.all_frames.to_json(),
        },
    }
    card_path = write_card(card, out)
    return TrainedAssessor(out, card_path, model_id, wall, temperature, val_nll)


def command_for(config: TrainConfig, out: Path) -> str:
    """The command line that reproduces these weights."""
    command = (f"spm-bluesky train assessor --seed {config.seed} --images {config.images} "
               f"--epochs {config.epochs}")
    if out.resolve() != WEIGHTS.resolve():
        command += f" --out {out}"
    return command


