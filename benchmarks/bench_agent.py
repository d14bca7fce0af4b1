"""Conditioning agent on the CPU: training time and steps to reach issue 5's goals, and
policy inference latency.

Run: ``python benchmarks/bench_agent.py [--steps N] [--every K] [--episodes E]``. Trains a
fresh agent as ``spm-bluesky train agent`` does (seed 0), and every ``every`` environment
steps evaluates the greedy agent on ``episodes`` held-out episodes (seed 1) against the
baselines measured once on the same episodes; prints one row per checkpoint and the first
checkpoint at which every goal was met. Then times a decision at batch 1: the network
alone (a prepared 64 px input), and the whole decision as ``condition_tip`` makes it
(plane fit and normalisation, free square, observation, network). Latency is a median.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from bench_assessor import median_seconds  # a sibling script (run from benchmarks/)

from spm_bluesky.domain import processing
from spm_bluesky.domain.actions import action_mask
from spm_bluesky.ml.agent.dqn import AgentNet, DQNAgent, DQNConfig, load_agent, train_dqn
from spm_bluesky.ml.agent.env import ConditioningEnv, episode_seed
from spm_bluesky.ml.agent.evaluation import baseline_factories, evaluate, goals
from spm_bluesky.ml.assessor import load_assessor
from spm_bluesky.ml.card import WEIGHTS
from spm_bluesky.protocols import observation
from spm_bluesky.twin import Frame, Instrument


def _median_ms(call, repeats: int = 300) -> float:
    return 1e3 * median_seconds(call, repeats)


def training(steps: int, every: int, episodes: int) -> None:
    """Train from scratch, evaluating at checkpoints."""
    assessor = load_assessor()
    baselines = evaluate(assessor, baseline_factories(1), episodes, 1)["policies"]
    start = time.perf_counter()
    evaluating = 0.0
    reached: list[int] = []
    print(f"baselines on {episodes} held-out episodes: " + ", ".join(
        f"{name} {p['mean_actions']:.2f}" for name, p in baselines.items()))
    print("| env steps | training wall time (s) | agent mean actions | / random | "
          "/ heuristic | / oracle | success | all goals |")
    print("|---:|---:|---:|---:|---:|---:|---:|---|")

    def checkpoint(done: int, agent: DQNAgent) -> None:
        nonlocal evaluating
        t0 = time.perf_counter()
        report = evaluate(assessor, {"agent": lambda env: agent}, episodes, 1)
        report["policies"].update(baselines)
        met = goals(report)
        evaluating += time.perf_counter() - t0
        ok = all(g["met"] for g in met.values())
        if ok and not reached:
            reached.append(done)
        wall = time.perf_counter() - start - evaluating
        print(f"| {done} | {wall:.0f} | {report['policies']['agent']['mean_actions']:.2f} | "
              f"{met['agent / random']['value']:.2f} | {met['agent / heuristic']['value']:.2f}"
              f" | {met['agent / oracle']['value']:.2f} | {met['success']['value']:.1%} | "
              f"{'yes' if ok else 'no'} |", flush=True)

    torch.set_num_threads(2)
    train_dqn(ConditioningEnv(assessor), AgentNet.from_assessor(WEIGHTS, 0),
              DQNConfig(seed=0, env_steps=steps), lambda k: episode_seed(0, k, 0),
              checkpoint=checkpoint, checkpoint_every=every)
    total = time.perf_counter() - start - evaluating
    print(f"\ntraining wall time (evaluations excluded): {total:.0f} s for {steps} steps; "
          f"goals first met at {reached[0] if reached else 'none of the checkpoints'} steps")


def latency() -> None:
    """Decision latency at batch 1."""
    agent = load_agent()
    image = Instrument(3).scan(Frame())
    probabilities = np.full(5, 0.2)
    prepared = processing.prepare(image, 10e-9)[0]
    mask = np.array(action_mask(processing.largest_empty_square(image, 10e-9)[0]), bool)
    obs = observation(prepared, probabilities, [(1, 0.1)], mask)

    def decide() -> None:
        free, _ = processing.largest_empty_square(image, 10e-9)
        allowed = np.array(action_mask(free), bool)
        agent.act(observation(processing.prepare(image, 10e-9)[0], probabilities,
                              [(1, 0.1)], allowed), allowed)

    print(f"\nagent {agent.model_id}, torch {torch.__version__}")
    print("| threads | network + head, batch 1 (ms) | whole decision, batch 1 (ms) |")
    print("|---:|---:|---:|")
    for threads in (1, 2):
        torch.set_num_threads(threads)
        print(f"| {threads} | {_median_ms(lambda: agent.act(obs, mask)):.2f} | "
              f"{_median_ms(decide):.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--every", type=int, default=2000)
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--latency-only", action="store_true")
    args = parser.parse_args()
    if not args.latency_only:
        training(args.steps, args.every, args.episodes)
    latency()


if __name__ == "__main__":
    main()
