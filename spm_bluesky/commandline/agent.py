"""``spm-bluesky train agent`` and ``spm-bluesky eval agent`` (torch loads on use)."""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import time
from datetime import date
from pathlib import Path
from typing import Any

#: Episodes of the held-out evaluation written into the model card.
CARD_EPISODES = 500


def subcommands(commands: argparse._SubParsersAction, name: str) -> argparse._SubParsersAction:
    """The model sub-parsers of ``train`` or ``eval`` (created by the assessor's CLI)."""
    parser = commands.choices[name]
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def _train_agent(args: argparse.Namespace) -> int:
    from spm_bluesky.ml.agent.dqn import (
        AgentNet,
        DQNConfig,
        config_dict,
        model_id_for,
        serialise,
        train_dqn,
    )
    from spm_bluesky.ml.agent.env import ConditioningEnv, episode_seed
    from spm_bluesky.ml.agent.evaluation import baseline_factories, evaluate, format_report, goals
    from spm_bluesky.ml.assessor.assessor import load_assessor
    from spm_bluesky.ml.card import WEIGHTS

    assessor_path = Path(args.assessor) if args.assessor else WEIGHTS
    assessor = load_assessor(assessor_path)
    steps = args.steps
    if steps is None:
        steps = 0 if args.from_tiled else DQNConfig().env_steps
    config = DQNConfig(seed=args.seed, env_steps=steps)
    learner = None
    if args.from_tiled:
        net, learner, stored = _replay_from_tiled(args, config)
        config = learner.config
        source = (f"{stored} stored transitions from {args.from_tiled}, then {steps} twin "
                  "steps")
    else:
        net = AgentNet.from_assessor(assessor_path, args.seed)
        source = "twin episodes from degraded tips (DeepSPM training mode)"
    result = train_dqn(ConditioningEnv(assessor), net, config,
                       lambda k: episode_seed(args.seed, k, 0), learner, progress=True)
    data = serialise(net)
    out = Path(args.out)
    out.write_bytes(data)
    model_id = model_id_for(data)
    result.agent.model_id = model_id
    print(f"wrote {out} ({model_id}); {result.env_steps} env steps, {result.episodes} "
          f"episodes, {result.wall_time_s:.0f} s")
    report = evaluate(assessor, {"agent": lambda env: result.agent,
                                 **baseline_factories(args.eval_seed)},
                      args.eval_episodes, args.eval_seed, progress=True)
    print(format_report(report))
    card = {
        "name": "conditioning agent (Double DQN)",
        "model_id": model_id,
        "file": out.name,
        "size_bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "date": date.today().isoformat(),
        "assessor": {"file": assessor_path.name, "model_id": assessor.model_id},
        "training": {
            "command": f"spm-bluesky train agent --seed {args.seed} --steps {steps} "
                       f"--eval-episodes {args.eval_episodes} --eval-seed {args.eval_seed}"
                       + (f" --from-tiled {args.from_tiled}" if args.from_tiled else ""),
            "data": f"{source}, env seeds episode_seed({args.seed}, k, split=0), "
                    f"k = 0 .. {result.episodes - 1}",
            "config": config_dict(config),
            "env_steps": result.env_steps,
            "episodes": result.episodes,
            "wall_time_s": round(result.wall_time_s, 1),
            "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, "
                       f"torch threads {config.threads}",
        },
        "held_out": {
            "command": f"spm-bluesky eval agent --episodes {args.eval_episodes} "
                       f"--seed {args.eval_seed}",
            "report": report,
            "goals": goals(report),
        },
    }
    _write_card(card, out)
    return 0


def _replay_from_tiled(args: argparse.Namespace, config: Any) -> tuple[Any, Any, int]:
    """The agent to go on from, its learner with the stored transitions, and how many.

    Learning starts as soon as the stored transitions are in (``learning_starts`` is the
    buffer size), then ``--updates`` gradient steps are taken on them alone; twin steps
    after that explore no more than the trained agent would.
    """
    import os
    from dataclasses import replace

    from tqdm import tqdm

    from spm_bluesky.ml.agent.dqn import Learner, load_agent
    from spm_bluesky.ml.agent.from_tiled import conditioning_runs, fill_replay, transitions_from_run
    from spm_bluesky.storage.tiled import connect

    api_key = args.api_key or os.environ.get("SPM_TILED_API_KEY") or os.environ.get(
        "TILED_API_KEY")
    if not api_key:
        raise SystemExit("--from-tiled needs the server's API key: --api-key or "
                         "SPM_TILED_API_KEY")
    agent = load_agent(args.weights)
    client = connect(args.from_tiled, api_key)
    transitions = []
    for run in tqdm(list(conditioning_runs(client, args.session)), desc="read runs",
                    unit="run"):
        transitions += transitions_from_run(run)
    if not transitions:
        raise SystemExit(f"no conditioning steps stored at {args.from_tiled}"
                         + (f" for session {args.session}" if args.session else ""))
    learner = Learner(agent.net, config)
    stored = fill_replay(learner, agent, transitions)
    learner.config = replace(config, learning_starts=learner.replay.size,
                             epsilon_start=config.epsilon_end)
    agent.net.train()
    for _ in tqdm(range(args.updates), desc="learn from stored", unit="update"):
        learner.update()
    agent.net.eval()
    print(f"{stored} transitions from {args.from_tiled}; {args.updates} updates, last loss "
          f"{learner.losses[-1] if learner.losses else float('nan'):.4f}")
    return agent.net, learner, stored


def _write_card(card: dict[str, Any], weights: Path) -> None:
    """``<stem>.card.json`` and ``<STEM>_CARD.md`` beside the weights."""
    weights.with_name(f"{weights.stem}.card.json").write_text(json.dumps(card, indent=2) + "\n")
    training, held = card["training"], card["held_out"]
    lines = [f"# Model card: {card['name']} (`{card['model_id']}`)", "",
             "Generated by `spm-bluesky train agent`; do not edit.", "",
             "| | |", "|---|---|",
             f"| file | `{card['file']}` ({card['size_bytes']:,} bytes) |",
             f"| sha256 | `{card['sha256']}` |", f"| date | {card['date']} |",
             f"| assessor | `{card['assessor']['model_id']}` (body initialised from it, "
             "frozen) |", "", "## Training", "", f"    {training['command']}", "",
             f"- {training['data']}.",
             f"- {training['env_steps']} environment steps, {training['episodes']} episodes, "
             f"{training['wall_time_s']:.0f} s on {training['machine']}.",
             f"- Config: {json.dumps(training['config'])}", "",
             "## Held-out evaluation", "", f"    {held['command']}", "",
             "| policy | success | mean actions | 95 % CI | bad images | damage (nm^2) | "
             "false good |", "|---|---|---|---|---|---|---|"]
    for name, p in held["report"]["policies"].items():
        lo, hi = p["ci95"]
        lines.append(f"| {name} | {p['success_rate']:.1%} | {p['mean_actions']:.2f} | "
                     f"[{lo:.2f}, {hi:.2f}] | {p['mean_bad_images']:.2f} | "
                     f"{p['mean_damage']:.1f} | {p['false_good_rate']:.1%} |")
    lines += ["", "| goal | value | target | met |", "|---|---|---|---|"]
    for name, goal in held["goals"].items():
        lines.append(f"| {name} | {goal['value']:.3f} | {goal['goal']} | "
                     f"{'yes' if goal['met'] else 'no'} |")
    weights.with_name(f"{weights.stem.upper()}_CARD.md").write_text("\n".join(lines) + "\n")


def _eval_agent(args: argparse.Namespace) -> int:
    import torch

    from spm_bluesky.ml.agent.dqn import load_agent
    from spm_bluesky.ml.agent.evaluation import (
        baseline_factories,
        evaluate,
        format_report,
        goals,
        write_json,
    )
    from spm_bluesky.ml.assessor.assessor import load_assessor

    torch.set_num_threads(args.threads)
    agent = load_agent(args.weights)
    assessor = load_assessor(args.assessor)
    start = time.perf_counter()
    report = evaluate(assessor, {"agent": lambda env: agent, **baseline_factories(args.seed)},
                      args.episodes, args.seed, progress=True)
    print(format_report(report))
    print(f"{time.perf_counter() - start:.0f} s")
    if args.json:
        write_json(report, args.json)
    met = all(goal["met"] for goal in goals(report).values())
    return 0 if met or not args.strict else 1


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``train agent`` and ``eval agent`` to the ``train`` / ``eval`` parsers."""
    weights = str(Path(__file__).parent / "weights" / "agent.pt")
    train = subcommands(commands, "train").add_parser(
        "agent", help="train the Double DQN conditioning agent (rewrites the shipped weights)",
        description="Train the agent on twin episodes, evaluate it against random, heuristic "
                    "and oracle policies, write the weights and their model card.")
    train.add_argument("--out", default=weights, help="weight file (default: agent.pt)")
    train.add_argument("--assessor", default=None, help="assessor weights (default: shipped)")
    train.add_argument("--seed", type=int, default=0, help="seed (default: %(default)s)")
    train.add_argument("--steps", type=int, default=None,
                       help="twin environment steps (default: 20000; 0 with --from-tiled)")
    train.add_argument("--from-tiled", metavar="URI", default=None,
                       help="go on from --weights with a replay buffer rebuilt from the "
                            "condition_tip runs stored at this Tiled URI")
    train.add_argument("--api-key", default=None,
                       help="Tiled API key (default: $SPM_TILED_API_KEY)")
    train.add_argument("--session", default=None,
                       help="with --from-tiled: only this session's runs")
    train.add_argument("--weights", default=None,
                       help="with --from-tiled: the agent to go on from (default: shipped)")
    train.add_argument("--updates", type=int, default=2000,
                       help="with --from-tiled: updates on the stored transitions "
                            "(default: %(default)s)")
    train.add_argument("--eval-episodes", type=int, default=CARD_EPISODES,
                       help="held-out episodes for the card (default: %(default)s)")
    train.add_argument("--eval-seed", type=int, default=1,
                       help="held-out seed for the card (default: %(default)s)")
    train.set_defaults(handler=_train_agent)

    evaluate = subcommands(commands, "eval").add_parser(
        "agent", help="agent, random, heuristic and oracle on the same held-out episodes",
        description="Success within 100 actions, mean actions with 95 %% CI, bad images and "
                    "damage per episode, for each policy, on the same seeded episodes.")
    evaluate.add_argument("--episodes", type=int, default=500,
                          help="episodes (default: %(default)s)")
    evaluate.add_argument("--seed", type=int, default=1, help="seed (default: %(default)s)")
    evaluate.add_argument("--json", default=None, help="write the figures as JSON here")
    evaluate.add_argument("--weights", default=None, help="agent weights (default: shipped)")
    evaluate.add_argument("--assessor", default=None, help="assessor weights (default: shipped)")
    evaluate.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    evaluate.add_argument("--strict", action="store_true",
                          help="exit with status 1 if a goal of issue 5 is missed")
    evaluate.set_defaults(handler=_eval_agent)
