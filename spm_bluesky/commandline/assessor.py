"""``spm-bluesky train assessor`` and ``spm-bluesky eval assessor`` (torch loads on use)."""

from __future__ import annotations

import argparse
from pathlib import Path

from spm_bluesky.ml.assessor.config import TrainConfig
from spm_bluesky.ml.card import WEIGHTS


def _train_assessor(args: argparse.Namespace) -> int:
    from spm_bluesky.ml.assessor.training import train

    config = TrainConfig(seed=args.seed, images=args.images, epochs=args.epochs,
                         workers=args.workers)
    result = train(config, out=Path(args.out), data_dir=args.data, progress=True)
    print(f"wrote {result.weights} ({result.model_id}), card {result.card}; "
          f"temperature {result.temperature:.3f}; {result.wall_time_s:.0f} s")
    return 0


def _eval_assessor(args: argparse.Namespace) -> int:
    from spm_bluesky.ml.assessor.assessor import load_assessor
    from spm_bluesky.ml.assessor.evaluation import run

    evaluation = run(load_assessor(args.weights), images=args.images, base=args.seed,
                     json_path=args.json, png_path=args.png, workers=args.workers)
    met = all(goal["met"] for goal in evaluation.all_frames.goals().values())
    return 0 if met or not args.strict else 1


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``train assessor`` and ``eval assessor`` to the ``spm-bluesky`` parser."""
    defaults = TrainConfig()
    train = commands.add_parser("train", help="train a model from twin data")
    train_models = train.add_subparsers(dest="model", required=True, metavar="MODEL")
    assessor = train_models.add_parser(
        "assessor", help="train the CNN tip-quality assessor (rewrites the shipped weights)",
        description="Render twin images, train, calibrate and evaluate the assessor; write "
                    "the weights and their model card. The same seed gives the same weights.")
    assessor.add_argument("--out", default=str(WEIGHTS),
                          help="weight file to write (default: the shipped assessor.pt)")
    assessor.add_argument("--seed", type=int, default=defaults.seed,
                          help="seed of data, init and augmentation (default: %(default)s)")
    assessor.add_argument("--images", type=int, default=defaults.images,
                          help="training images (default: %(default)s)")
    assessor.add_argument("--epochs", type=int, default=defaults.epochs,
                          help="epochs (default: %(default)s)")
    assessor.add_argument("--data", default=None,
                          help="directory to keep the rendered sets in (.npz shards) and reuse")
    assessor.add_argument("--workers", type=int, default=defaults.workers,
                          help="processes rendering twin images (default: %(default)s)")
    assessor.set_defaults(handler=_train_assessor)

    evaluate = commands.add_parser("eval", help="evaluate a model on fresh held-out data")
    eval_models = evaluate.add_subparsers(dest="model", required=True, metavar="MODEL")
    held_out = eval_models.add_parser(
        "assessor", help="evaluate the assessor on a fresh held-out twin set",
        description="Print the confusion matrix, per-class precision and recall, AUC and "
                    "accuracy for good versus bad, calibration errors and balanced accuracy.")
    held_out.add_argument("--weights", default=None,
                          help="weight file (default: the shipped assessor.pt)")
    held_out.add_argument("--images", type=int, default=defaults.eval_images,
                          help="held-out images (default: %(default)s)")
    held_out.add_argument("--seed", type=int, default=defaults.eval_base,
                          help="held-out set number, 0 to 99 (default: %(default)s)")
    held_out.add_argument("--json", default=None, help="write the figures as JSON here")
    held_out.add_argument("--png", default=None, help="write the reliability diagram here")
    held_out.add_argument("--workers", type=int, default=defaults.workers,
                          help="processes rendering twin images (default: %(default)s)")
    held_out.add_argument("--strict", action="store_true",
                          help="exit with status 1 if a goal of issue 4 is missed")
    held_out.set_defaults(handler=_eval_assessor)
