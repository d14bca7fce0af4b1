"""Learning from stored operation: the agent's replay buffer filled from conditioning runs.

A ``condition_tip`` run holds everything a transition needs: the images (``primary``), the
assessor's class probabilities for each (``assessment``), and per step the action and the
mask it was chosen under (``action``). :func:`transitions_from_run` turns it back into the
transitions the agent lived through, with the same observations the live plan built
(:func:`spm_bluesky.protocols.observation` over
:func:`spm_bluesky.domain.processing.prepare`),
so ``spm-bluesky train agent --from-tiled URI`` can learn from past operation. The runs are
read as records (:class:`~spm_bluesky.storage.StoredRun`): no data key is spelled here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from bluesky_tiled_plugins.clients.catalog_of_bluesky_runs import CatalogOfBlueskyRuns
from tiled.client.container import Container

from spm_bluesky import schema
from spm_bluesky.domain import processing
from spm_bluesky.domain.actions import ACTIONS, action_mask
from spm_bluesky.ml.agent.dqn import DQNAgent, Learner, augmentations, extras_of
from spm_bluesky.ml.agent.env import GOOD_REWARD, STEP_REWARD
from spm_bluesky.protocols import CLASSES, HISTORY, observation
from spm_bluesky.storage import StoredRun, runs_of_plan

#: Defaults of ``condition_tip`` for a run whose ``plan_args`` lack them.
DEFAULT_SIZE = 10e-9
DEFAULT_GOOD_THRESHOLD = 0.9


@dataclass(frozen=True)
class Transition:
    """One step of a stored episode, as the agent saw it."""

    observation: dict[str, np.ndarray]
    action: int
    reward: float
    next_observation: dict[str, np.ndarray]
    terminated: bool


def transitions_from_run(run: Container | StoredRun) -> list[Transition]:
    """The transitions of one stored ``condition_tip`` run (empty if it took no action)."""
    stored = run if isinstance(run, StoredRun) else StoredRun(run)
    if stored.plan_name != schema.CONDITION_TIP:
        raise ValueError(f"run {stored.uid} is a {stored.plan_name!r} run, not "
                         f"{schema.CONDITION_TIP!r}")
    args = stored.metadata.get(schema.PLAN_ARGS, {})
    size = float(args.get("size", DEFAULT_SIZE))
    threshold = float(args.get("good_threshold", DEFAULT_GOOD_THRESHOLD))
    steps = stored.steps(arrays=True)
    if not steps:
        return []
    probabilities = np.array([[a.probabilities[c] for c in CLASSES]
                              for a in stored.assessments()], float)
    images = np.asarray(stored.images().images, dtype=np.float64)
    actions = [step.action_index for step in steps]
    masks = [np.asarray(step.mask, bool) for step in steps]
    if len(images) < len(actions) + 1 or len(probabilities) < len(actions) + 1:
        raise ValueError(f"run {stored.uid} has {len(actions)} actions but only "
                         f"{len(images)} images and {len(probabilities)} assessments")
    history: list[tuple[int, float]] = []
    observations = []
    for i in range(len(actions) + 1):
        mask = masks[i] if i < len(actions) else np.array(
            action_mask(processing.largest_empty_square(images[i], size)[0]), bool)
        observations.append(observation(processing.prepare(images[i], size)[0],
                                         probabilities[i], history, mask, HISTORY))
        if i < len(actions):
            history = [*history, (actions[i], float(probabilities[i + 1, 0]))]
    out = []
    for i, action in enumerate(actions):
        good = bool(probabilities[i + 1, 0] > threshold)
        out.append(Transition(observations[i], action,
                              STEP_REWARD + (GOOD_REWARD if good else 0.0),
                              observations[i + 1], good))
    return out


def conditioning_runs(client: CatalogOfBlueskyRuns,
                      session_uid: str | None = None) -> Iterator[StoredRun]:
    """Every stored ``condition_tip`` run (of one session, if given), oldest first."""
    for run in runs_of_plan(client, schema.CONDITION_TIP, session_uid).values():
        yield StoredRun(run)


def fill_replay(learner: Learner, agent: DQNAgent, transitions: list[Transition]) -> int:
    """Store ``transitions`` (each with its four augmentations) without learning yet.

    A step's next observation is the following step's observation (the same object), so
    each image's body features are computed once.
    """
    pooled: dict[int, np.ndarray] = {}

    def features(observation: dict[str, np.ndarray]) -> np.ndarray:
        if id(observation) not in pooled:
            pooled[id(observation)] = agent.pooled(augmentations(observation["image"]))
        return pooled[id(observation)]

    for t in transitions:
        if not 0 <= t.action < len(ACTIONS):
            raise ValueError(f"stored action index {t.action} is not in the action set")
        learner.replay.add(features(t.observation), extras_of(t.observation), t.action,
                           t.reward, features(t.next_observation),
                           extras_of(t.next_observation),
                           np.asarray(t.next_observation["action_mask"], bool), t.terminated)
    return len(transitions)
