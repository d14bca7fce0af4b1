"""``spm-bluesky eval assessor``, ``eval agent`` and ``eval session``: held-out figures."""

import json as jsonlib  # ``json`` is an option's name below
import time
from pathlib import Path
from typing import Any

import typer

from spm_bluesky.commandline._common import (
    existing_file,
    fail,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    usage_error,
)
from spm_bluesky.ml.assessor.config import TrainConfig
from spm_bluesky.ml.card import GATE, card_paths, write_card


def _held_out_set(text: str) -> int:
    number = int(non_negative_int(text))
    if number > 99:
        raise typer.BadParameter(f"{text!r} is not a held-out set number (0 to 99)")
    return number


eval_app = typer.Typer(no_args_is_help=True, help="Evaluate a model on fresh held-out data.")
_DEFAULTS = TrainConfig()


@eval_app.command("assessor")
def eval_assessor(
    weights: Path | None = typer.Option(None, callback=existing_file, show_default=False,
                                        help="weight file (.pt) or gate file (.npz) (default: the "
                                             "shipped gate.npz)"),
    images: int = typer.Option(_DEFAULTS.eval_images, parser=positive_int,
                               help="held-out images"),
    seed: int = typer.Option(_DEFAULTS.eval_base, parser=_held_out_set,
                             help="held-out set number, 0 to 99"),
    json: Path | None = typer.Option(None, help="write the figures as JSON here",
                                     show_default=False),
    png: Path | None = typer.Option(
        None, show_default=False,
        help="write the reliability diagram here (with --real: the contact sheet)"),
    workers: int = typer.Option(_DEFAULTS.workers, parser=positive_int,
                                help="processes rendering twin images"),
    strict: bool = typer.Option(False, "--strict",
                                help="exit with status 1 if a goal on the model card is missed"),
    real: bool = typer.Option(
        False, "--real",
        help="evaluate on the real evaluation set (real STM topographs labelled by eye) "
             "instead of the twin; --images, --seed and --workers do not apply"),
    real_set_path: Path | None = typer.Option(
        None, "--real-set", callback=existing_file, show_default=False,
        help="the real set's arrays (real_set.npz; default: $SPM_REAL_SET, then "
             "tests/data/real/real_set.npz of the checkout); needs --real"),
    card: bool = typer.Option(
        False, "--card",
        help="with --real: write the figures into the weight file's model card (JSON and "
             "Markdown beside it)"),
    against: Path | None = typer.Option(
        None, "--against", callback=existing_file, show_default=False,
        help="with --real: another weight or gate file; print the differences of the "
             "balanced accuracy and AUC from it, with paired intervals by frame"),
) -> int:
    """Evaluate the assessor on a fresh held-out twin set, or with --real on real images.

    Print the confusion matrix, per-class precision and recall, AUC and accuracy for good
    versus bad, calibration errors and balanced accuracy. With --real: balanced accuracy,
    AUC, accuracy at 0.5 and 0.9 and a row per source; with --against, whether the real set
    tells the two assessors apart.
    """
    from spm_bluesky.ml.assessor.assessor import load_assessor
    from spm_bluesky.ml.assessor.evaluation import run
    from spm_bluesky.ml.assessor.unsure import UnsureTally

    if real_set_path is not None and not real:
        raise usage_error("--real-set", "only applies with --real")
    if card and not real:
        raise usage_error("--card", "only applies with --real")
    if against is not None and not real:
        raise usage_error("--against", "only applies with --real")
    try:
        assessor = load_assessor(weights)
        other = load_assessor(against) if against is not None else None
    except ValueError as err:  # an unsure calibration made for other weights
        raise fail(str(err)) from None
    if real:
        card_weights = (weights or GATE) if card else None
        return _eval_real(assessor, real_set_path, json, png, strict, card_weights, other)
    tally = UnsureTally(assessor)
    try:
        evaluation = run(tally, images=images, base=seed, json_path=json, png_path=png,
                         workers=workers)
    except ValueError as err:
        raise fail(str(err), 2) from None
    _report_twin_unsure(tally, json)
    met = all(goal["met"] for goal in evaluation.all_frames.goals().values())
    met = met and not tally.rate() > UNSURE_GOAL
    return 0 if met or not strict else 1


#: The goal for the share of the twin's own held-out images the assessor is unsure of.
UNSURE_GOAL = 0.05


def _report_twin_unsure(tally: Any, json_path: Path | None) -> None:
    """Print the twin's unsure rate (and add it to the JSON written by the evaluation)."""
    rate = tally.rate()
    if rate != rate:  # NaN: no calibration beside the weights
        print("unsure rate on the twin: n/a (no unsure calibration beside the weights)")
    else:
        print(f"unsure rate on the twin: {rate:.4f} ({sum(tally.unsure)} of "
              f"{len(tally.unsure)} frames; goal <= {UNSURE_GOAL})")
    if json_path is not None:
        payload = jsonlib.loads(json_path.read_text())
        payload["unsure_rate"] = None if rate != rate else rate
        json_path.write_text(jsonlib.dumps(payload, indent=2) + "\n")


def _eval_real(assessor: Any, arrays: Path | None, json: Path | None, png: Path | None,
               strict: bool, card_weights: Path | None, other: Any = None) -> int:
    """``eval assessor --real``: the figures on the real set, its JSON and contact sheet, and
    with ``card_weights`` the figures in that weight file's model card."""
    from spm_bluesky.ml.assessor import real_set

    card: dict[str, Any] | None = None
    if card_weights is not None:  # checked first: nothing is evaluated for a card it can't write
        card = _card_for(card_weights, assessor.model_id)
    try:
        labelled = real_set.load_real_set(arrays)
    except (real_set.RealSetMissing, ValueError) as err:
        raise fail(str(err)) from None
    evaluation = real_set.evaluate(assessor, labelled)
    print(evaluation.table())
    vetoed = real_set.with_veto(evaluation, labelled).overall
    print(f"\nwith the line-streak veto (threshold from the twin): balanced accuracy "
          f"{vetoed.balanced_accuracy:.3f}, AUC {vetoed.auc:.3f} (the veto is not applied "
          "by the assessor: see docs/explanation/assessor.md)")
    if other is not None:
        baseline = real_set.evaluate(other, labelled)
        theirs = baseline.overall
        print(f"\nagainst {other.model_id} (balanced accuracy {theirs.balanced_accuracy:.3f}, "
              f"AUC {theirs.auc:.3f}), paired by frame:")
        for name, difference in evaluation.compared(baseline).items():
            print(f"  {name:<19}{difference}")
    if json:
        print(f"wrote {real_set.write_json(evaluation, json)}")
    if png:
        print(f"wrote {real_set.contact_sheet(labelled, png, evaluation)}")
    if card is not None and card_weights is not None:
        card["real_set"] = real_set.card_entry(evaluation)
        print(f"wrote the real-set figures into {write_card(card, card_weights)}")
    met = all(goal["met"] for goal in evaluation.goals().values())
    return 0 if met or not strict else 1


def _card_for(weights: Path, model_id: str) -> dict[str, Any]:
    """The model card of ``weights``, refused (one line) if it is missing or describes other
    weights than those evaluated."""
    json_path, _ = card_paths(weights)
    if not json_path.is_file():
        raise fail(f"no model card beside {weights} ({json_path.name}): --card adds to the "
                   "card that 'spm-bluesky train assessor' writes")
    card: dict[str, Any] = jsonlib.loads(json_path.read_text())
    if card.get("model_id") != model_id:
        raise fail(f"the card {json_path} is for {card.get('model_id')}, not for {model_id}: "
                   "nothing written")
    return card


@eval_app.command("agent")
def eval_agent(
    episodes: int = typer.Option(500, parser=positive_int, help="episodes"),
    seed: int = typer.Option(1, parser=non_negative_int, help="seed"),
    json: Path | None = typer.Option(None, help="write the figures as JSON here",
                                     show_default=False),
    weights: Path | None = typer.Option(None, callback=existing_file, show_default=False,
                                        help="agent weights (default: shipped)"),
    assessor: Path | None = typer.Option(None, callback=existing_file, show_default=False,
                                         help="assessor weights (default: shipped)"),
    threads: int = typer.Option(2, parser=positive_int, help="torch threads"),
    strict: bool = typer.Option(False, "--strict",
                                help="exit with status 1 if a goal on the model card is missed"),
) -> int:
    """Agent, random, heuristic and oracle on the same held-out episodes.

    Success within 100 actions, mean actions with 95 % CI, bad images and damage per
    episode, for each policy, on the same seeded episodes.
    """
    from spm_bluesky.ml.agent.dqn import load_agent, set_threads
    from spm_bluesky.ml.agent.evaluation import (
        baseline_factories,
        evaluate,
        format_report,
        goals,
        write_json,
    )
    from spm_bluesky.ml.assessor.assessor import load_assessor

    set_threads(threads)
    try:
        agent = load_agent(weights)
    except FileNotFoundError as err:
        raise fail(str(err)) from None
    model = load_assessor(assessor)
    start = time.perf_counter()
    report = evaluate(model, {"agent": lambda env: agent, **baseline_factories(seed)},
                      episodes, seed, progress=True)
    print(format_report(report))
    print(f"{time.perf_counter() - start:.0f} s")
    if json:
        write_json(report, json)
    met = all(goal["met"] for goal in goals(report).values())
    return 0 if met or not strict else 1


def _systems(value: str) -> list[Any]:
    """The systems named in ``value``, comma-separated; a usage error if one is unknown."""
    from spm_bluesky.evaluation.system import System

    try:
        systems = [System(name.strip()) for name in value.split(",") if name.strip()]
    except ValueError:
        systems = []
    if not systems:
        raise usage_error("--systems", f"takes names among "
                                       f"{', '.join(s.value for s in System)}, not {value!r}")
    return systems


@eval_app.command("session")
def eval_session(
    hours: float = typer.Option(1.0, parser=positive_float,
                                help="simulated hours per system"),
    seed: int = typer.Option(0, parser=non_negative_int, help="twin seed"),
    json: Path | None = typer.Option(None, help="write the figures as JSON here",
                                     show_default=False),
    systems: str | None = typer.Option(
        None, show_default=False,
        help="comma-separated, among full, random, heuristic and oracle (default: all)"),
    assessor: Path | None = typer.Option(None, callback=existing_file, show_default=False,
                                         help="assessor weights (default: shipped)"),
    agent: Path | None = typer.Option(None, show_default=False,
                                      help="agent weights (default: shipped)"),
    degraded_start: bool = typer.Option(
        False, "--degraded-start",
        help="degrade the tip before each session (Sim:Degrade), so that short sessions must "
             "condition it too"),
    degrade_every: float | None = typer.Option(
        None, metavar="HOURS", parser=non_negative_float,
        show_default="the schedule of the published figures",
        help="also degrade the tip on purpose every HOURS of instrument time, the same for "
             "every system, so that conditioning is a real share of the session; 0: only "
             "the twin's own degradations"),
) -> int:
    """The autonomous loop with full, random, heuristic and oracle systems.

    Run the autonomous session on a fresh twin IOC with the same seed for each system;
    print good images per simulated hour and the counts.
    """
    from spm_bluesky.evaluation.session import evaluate_session, write_json
    from spm_bluesky.ml.agent.policies import MissingAgentError

    chosen: dict[str, Any] = {} if systems is None else {"systems": _systems(systems)}
    if degrade_every is not None:
        chosen["degrade_every"] = degrade_every
    try:
        evaluation = evaluate_session(hours, seed, assessor_path=assessor, agent_path=agent,
                                      degraded_start=degraded_start, **chosen)
    except (MissingAgentError, ValueError) as err:
        raise fail(str(err)) from None
    print(evaluation.table())
    if json:
        print(f"wrote {write_json(evaluation, json)}")
    return 0
