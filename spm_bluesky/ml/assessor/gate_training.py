"""Fitting a gated assessor's gate, and its model card: ``spm-bluesky train gate``.

The gate (:mod:`spm_bluesky.ml.assessor.gate`) learns to tell the twin's frames from
synthetic frames of many surfaces (:mod:`spm_bluesky.ml.assessor.synth`), on the specialist's
features of the validation splits (``fit_frames`` of each, set ``seed``): the frames neither
network's weights were fitted on. No real image takes part. The card then measures the pair
on the twin's held-out frames (the model card's set: 5,000 frames, seed 0) and on held-out
synthetic frames of every family, with the share of each that the gate sends to the
generalist.
"""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spm_bluesky.ml.assessor import data as ds
from spm_bluesky.ml.assessor.assessor import load_network
from spm_bluesky.ml.assessor.config import GateConfig
from spm_bluesky.ml.assessor.evaluation import evaluate_on, held_out_randomisation, synth_figures
from spm_bluesky.ml.assessor.gate import (
    L2,
    MODEL_NAME,
    GateFile,
    fit_logistic,
    gate_features,
    load_gated,
    relative_path,
)
from spm_bluesky.ml.assessor.synth import generate as synth
from spm_bluesky.ml.assessor.synth.config import SynthConfig
from spm_bluesky.ml.assessor.training import prepared
from spm_bluesky.ml.card import GATE, GENERALIST, WEIGHTS, weight_file_fields, write_card
from spm_bluesky.protocols import CLASSES


@dataclass(frozen=True)
class TrainedGate:
    """What :func:`train_gate` wrote."""

    gate: Path
    card: Path
    model_id: str
    wall_time_s: float


def train_gate(generalist: Path | str, out: Path | str, specialist: Path | str | None = None,
               config: GateConfig | None = None, data_dir: Path | str | None = None,
               progress: bool = True) -> TrainedGate:
    """Fit the gate between ``specialist`` (default: the shipped weights) and
    ``generalist``, write the gate file ``out`` and its card beside it, and measure the pair.

    ``data_dir`` keeps the rendered sets for reuse (a training run's ``--data``).
    """
    config = config or GateConfig()
    started = time.perf_counter()
    out = Path(out)
    specialist_path = Path(specialist) if specialist is not None else WEIGHTS
    first = load_network(specialist_path)
    second = load_network(generalist)
    twin_fit = ds.cached(ds.VALIDATION, config.seed, config.fit_frames, data_dir,
                         ds.Randomisation(), config.workers, progress)
    synth_fit = synth.cached(ds.VALIDATION, config.seed, config.fit_frames, data_dir,
                             SynthConfig(), config.workers)

    twin_features = gate_features(first, prepared(twin_fit))
    synth_features = gate_features(first, prepared(synth_fit))
    gate = fit_logistic(twin_features, synth_features)
    fit = {"twin_validation_seeds": twin_fit.manifest["seeds"],
           "synthetic_validation_seeds": synth_fit.manifest["seeds"],
           "frames": [len(twin_fit), len(synth_fit)], "l2": L2,
           "twin_kept": float(np.mean(gate.p_twin(twin_features) >= config.threshold)),
           "synthetic_sent": float(np.mean(gate.p_twin(synth_features) < config.threshold))}
    out.parent.mkdir(parents=True, exist_ok=True)
    files = relative_path(specialist_path, out), relative_path(generalist, out)
    data = GateFile(files[0], first.model_id, files[1], second.model_id, gate,
                    config.threshold, fit).save(out)
    gated = load_gated(out)

    held_out = ds.cached(ds.HELD_OUT, 0, config.eval_images, data_dir,
                         held_out_randomisation(), config.workers, progress)
    synth_held_out = synth.cached(ds.HELD_OUT, 0, config.synth_eval_images, data_dir,
                                  SynthConfig(), config.workers)
    evaluation = evaluate_on(gated, held_out)
    routing = {"twin_held_out": float(np.mean(gated.routes(prepared(held_out)))),
               "synthetic_held_out": float(np.mean(gated.routes(prepared(synth_held_out))))}
    synthetic = synth_figures(gated, synth_held_out)
    wall = time.perf_counter() - started
    card = {
        "kind": MODEL_NAME,
        "name": "gated tipnet assessor",
        **weight_file_fields(gated.model_id, out, data),
        "classes": list(CLASSES),
        "specialist": {"file": files[0], "model_id": first.model_id},
        "generalist": {"file": files[1], "model_id": second.model_id},
        "gate": {"method": "logistic regression on the specialist's frame features (mean and "
                           "maximum over the windows of the penultimate features), twin "
                           "validation frames against synthetic validation frames",
                 "threshold": config.threshold, "fit": fit},
        "training": {"command": command_for(generalist, out, specialist, config),
                     "config": asdict(config), "wall_time_s": round(wall, 1),
                     "torch": torch.__version__, "python": platform.python_version(),
                     "machine": platform.machine()},
        "routing": routing,
        "held_out": {
            "seeds": held_out.manifest["seeds"],
            "class_counts": held_out.manifest["class_counts"],
            "command": eval_command(out, config.eval_images),
            "set_aside": {"no_molecule": evaluation.no_molecule, "no_flip": evaluation.no_flip},
            "metrics": evaluation.observable.to_json(),
            "all_frames": evaluation.all_frames.to_json(),
        },
        "synthetic_held_out": {"seeds": synth_held_out.manifest["seeds"],
                               "good_versus_bad": synthetic},
    }
    card_path = write_card(card, out)
    return TrainedGate(out, card_path, gated.model_id, wall)


def command_for(generalist: Path | str, out: Path | str, specialist: Path | str | None,
                config: GateConfig) -> str:
    """The command line that fits this gate again (the shipped files are the defaults and
    are left out)."""
    command = "spm-bluesky train gate" + _option("--generalist", generalist, GENERALIST)
    command += _option("--out", out, GATE) + _option("--specialist", specialist, WEIGHTS)
    defaults = GateConfig()
    for name, value in asdict(config).items():
        if name != "workers" and value != getattr(defaults, name):
            command += f" --{name.replace('_', '-')} {value:g}"
    return command


def eval_command(out: Path | str, images: int) -> str:
    """The command line that evaluates the gate file ``out`` on the card's held-out set."""
    return f"spm-bluesky eval assessor{_option('--weights', out, GATE)} --images {images}"


def _option(name: str, path: Path | str | None, default: Path) -> str:
    """`` name path``, or nothing where ``path`` is None or the shipped ``default``."""
    if path is None or Path(path).resolve() == default.resolve():
        return ""
    return f" {name} {path}"


def card_summary(card: dict[str, Any]) -> str:
    """One line for the command's output: routing and the twin's figures."""
    goals = card["held_out"]["all_frames"]["goals"]
    return (f"to the generalist: {card['routing']['twin_held_out']:.1%} of twin frames, "
            f"{card['routing']['synthetic_held_out']:.1%} of synthetic frames; twin AUC "
            f"{goals['auc_good']['value']:.4f}, accuracy {goals['accuracy_good']['value']:.4f}")
