"""``spm-bluesky eval agent``: four policies on the same seeded held-out episodes.

The trained agent, a uniformly random policy, the scripted escalation heuristic and an
oracle that reads the true tip state (exact value iteration over the defect sets, limited
to the allowed actions) each run the same episodes: episode ``i`` of seed ``S`` builds the
same twin and the same degraded tip for every policy (:func:`~.env.episode_seed`, split 1:
never used in training). Per policy: success within 100 actions (the assessor declared the
tip good and it truly is), mean actions until the assessor declared the tip good, with a
95 % confidence interval (an episode that hits the cap counts 100), mean bad images per
episode (images taken while the true tip was not good, the first included) and mean sample
damage per episode (nm^2); beside them, how often the episode ended on a false "good"
(the assessor passed the threshold on a tip that was not good: the success rate's misses
other than the cap).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spm_bluesky.ml.agent.env import ConditioningEnv, EnvConfig, episode_seed
from spm_bluesky.ml.agent.policies import HeuristicPolicy, OraclePolicy, RandomPolicy
from spm_bluesky.protocols import Assessor, Policy
from spm_bluesky.twin.tip import TipClass

#: Held-out split of :func:`~.env.episode_seed`.
EVAL_SPLIT = 1
#: The goals for the agent's mean actions, as ratios to each baseline.
GOAL_RATIOS: dict[str, float] = {"random": 0.5, "heuristic": 0.8, "oracle": 1.5}
GOAL_SUCCESS = 0.98


def oracle_for(env: ConditioningEnv) -> OraclePolicy:
    """The oracle of ``env``: it reads the env's true tip state."""
    return OraclePolicy(lambda: env.truth, env.config.twin.tip)


@dataclass(frozen=True)
class Episode:
    """What one policy did in one episode."""

    actions: int
    success: bool
    bad_images: int
    damage_nm2: float
    crashes: int
    #: The assessor declared the tip good while it truly was not (the episode ended there).
    false_good: bool = False


def run_episode(env: ConditioningEnv, policy: Policy, seed: int) -> Episode:
    """One episode of ``policy`` on the twin seeded ``seed``."""
    observation, info = env.reset(seed=seed)
    policy.reset(seed)
    bad = int(info["true_class"] != TipClass.GOOD)
    terminated = truncated = False
    while not (terminated or truncated):
        decision = policy.act(observation, info["action_mask"])
        observation, _, terminated, truncated, info = env.step(decision.action)
        bad += int(info["true_class"] != TipClass.GOOD)
    success = terminated and info["true_class"] == TipClass.GOOD
    return Episode(env.actions_taken, success, bad, env.damage * 1e18, env.crashes,
                   terminated and not success)


def summarise(episodes: list[Episode]) -> dict[str, Any]:
    """The figures of one policy: the JSON entry of ``eval agent``.

    Mean actions count every episode until the assessor declared the tip good (a truncated
    episode counts ``max_actions``); success also needs the true tip to be good then.
    """
    actions = np.array([e.actions for e in episodes], dtype=float)
    half = 1.96 * actions.std(ddof=1) / math.sqrt(len(actions)) if len(actions) > 1 else 0.0
    return {
        "success_rate": float(np.mean([e.success for e in episodes])),
        "mean_actions": float(actions.mean()),
        "ci95": [float(actions.mean() - half), float(actions.mean() + half)],
        "mean_bad_images": float(np.mean([e.bad_images for e in episodes])),
        "mean_damage": float(np.mean([e.damage_nm2 for e in episodes])),
        "false_good_rate": float(np.mean([e.false_good for e in episodes])),
    }


PolicyFactory = Callable[[ConditioningEnv], Policy]


def baseline_factories(seed: int) -> dict[str, PolicyFactory]:
    """Random, heuristic and oracle, each built for an env."""
    return {
        "random": lambda env: RandomPolicy(seed),
        "heuristic": lambda env: HeuristicPolicy(),
        "oracle": oracle_for,
    }


def evaluate(
    assessor: Assessor,
    factories: dict[str, PolicyFactory],
    episodes: int,
    seed: int,
    config: EnvConfig | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Run every policy on the same ``episodes`` held-out episodes; the JSON report."""
    config = config or EnvConfig()
    seeds = [episode_seed(seed, i, EVAL_SPLIT) for i in range(episodes)]
    report: dict[str, Any] = {"episodes": episodes, "seed": seed, "policies": {}}
    for name, factory in factories.items():
        env = ConditioningEnv(assessor, config)
        policy = factory(env)
        iterator: Any = seeds
        if progress:
            from tqdm import tqdm

            iterator = tqdm(seeds, desc=name, unit="episode")
        results = [run_episode(env, policy, s) for s in iterator]
        report["policies"][name] = summarise(results)
    return report


def goals(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The agent's goals, each with its value, goal and whether it is met."""
    policies = report["policies"]
    agent = policies["agent"]
    out: dict[str, dict[str, Any]] = {}
    for base, ratio in GOAL_RATIOS.items():
        if base in policies:
            value = agent["mean_actions"] / policies[base]["mean_actions"]
            out[f"agent / {base}"] = {"value": value, "goal": f"<= {ratio}",
                                      "met": value <= ratio}
    out["success"] = {"value": agent["success_rate"], "goal": f">= {GOAL_SUCCESS}",
                      "met": agent["success_rate"] >= GOAL_SUCCESS}
    return out


def format_report(report: dict[str, Any]) -> str:
    """The report as a plain-text table (and the goals, when the agent was evaluated)."""
    lines = [f"{report['episodes']} held-out episodes, seed {report['seed']}",
             f"{'policy':<10} {'success':>8} {'actions':>8} {'95% CI':>16} "
             f"{'bad imgs':>9} {'damage nm2':>11} {'false good':>11}"]
    for name, p in report["policies"].items():
        lo, hi = p["ci95"]
        lines.append(f"{name:<10} {p['success_rate']:>8.1%} {p['mean_actions']:>8.2f} "
                     f"{f'[{lo:.2f}, {hi:.2f}]':>16} {p['mean_bad_images']:>9.2f} "
                     f"{p['mean_damage']:>11.1f} {p.get('false_good_rate', 0.0):>11.1%}")
    if "agent" in report["policies"]:
        for name, goal in goals(report).items():
            lines.append(f"goal {name}: {goal['value']:.3f} ({goal['goal']}) "
                         f"{'met' if goal['met'] else 'MISSED'}")
    return "\n".join(lines)


def write_json(report: dict[str, Any], path: str | Path) -> None:
    """Write the report in the documented JSON shape."""
    Path(path).write_text(json.dumps(report, indent=2) + "\n")


__all__ = ["Episode", "evaluate", "format_report", "goals", "oracle_for", "run_episode",
           "summarise", "write_json"]
