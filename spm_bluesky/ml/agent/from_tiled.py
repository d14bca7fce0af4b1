"""Rebuilding the agent's replay buffer from conditioning runs stored in Tiled.

A ``condition_tip`` run holds everything a transition needs: the images (``primary``), the
assessor's class probabilities for each (``assessment``), and per step the action and the
mask it was chosen under (``action``). :func:`transitions_from_run` turns it back into the
transitions the agent lived through, with the same observations the live plan built
(:func:`spm_bluesky.protocols.observation` over
:func:`spm_bluesky.domain.processing.prepare`),
so ``spm-bluesky train agent --from-tiled URI`` can learn from past operation.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from tiled.queries import Eq

from spm_bluesky.domain import processing
from spm_bluesky.domain.actions import ACTIONS, action_mask
from spm_bluesky.ml.agent.dqn import DQNAgent, Learner, augmentations, extras_of
from spm_bluesky.ml.agent.env import GOOD_REWARD, STEP_REWARD
from spm_bluesky.protocols import CLASSES, HISTORY, observation
from spm_bluesky.storage.tiled import replay

#: ``plan_name`` of the runs that hold conditioning episodes.
PLAN_NAME = "condition_tip"
IMAGE_FIELD = "stm-scan-image"


@dataclass(frozen=True)
class Transition:
    """One step of a stored episode, as the agent saw it."""

    observation: dict[str, np.ndarray]
    action: int
    reward: float
    next_observation: dict[str, np.ndarray]
    terminated: bool


def _stream_rows(run: Any) -> dict[str, dict[str, list[Any]]]:
    """stream -> field -> values in seq_num order, de-duplicated (via ``storage.replay``)."""
    streams: dict[str, str] = {}
    rows: dict[str, dict[int, dict[str, Any]]] = {}

    def collect(name: str, doc: dict[str, Any]) -> None:
        if name == "descriptor":
            streams[doc["uid"]] = doc["name"]
        elif name == "event":
            rows.setdefault(streams[doc["descriptor"]], {})[doc["seq_num"]] = doc["data"]

    replay(run, collect)
    out: dict[str, dict[str, list[Any]]] = {}
    for stream, events in rows.items():
        ordered = [events[s] for s in sorted(events)]
        out[stream] = {key: [e[key] for e in ordered] for key in ordered[0]}
    return out


def transitions_from_run(run: Any) -> list[Transition]:
    """The transitions of one stored ``condition_tip`` run (empty if it took no action)."""
    start = run.metadata["start"]
    if start.get("plan_name") != PLAN_NAME:
        raise ValueError(f"run {start.get('uid')} is a {start.get('plan_name')!r} run, not "
                         f"{PLAN_NAME!r}")
    args = start.get("plan_args", {})
    size = float(args.get("size", 10e-9))
    threshold = float(args.get("good_threshold", 0.9))
    streams = _stream_rows(run)
    steps = streams.get("action")
    if not steps:
        return []
    judged = streams["assessment"]
    probabilities = np.array([judged[f"assessment-p_{c}"] for c in CLASSES], float).T
    images = np.asarray(streams["primary"][IMAGE_FIELD], dtype=np.float64)
    actions = [int(a) for a in steps["decision-action_index"]]
    masks = [np.asarray(m, bool) for m in steps["decision-mask"]]
    if len(images) < len(actions) + 1 or len(probabilities) < len(actions) + 1:
        raise ValueError(f"run {start['uid']} has {len(actions)} actions but only "
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


def conditioning_runs(client: Any, session_uid: str | None = None) -> Iterator[Any]:
    """Every stored ``condition_tip`` run (of one session, if given), oldest first."""
    results = client.search(Eq("start.plan_name", PLAN_NAME))
    if session_uid is not None:
        results = results.search(Eq("start.session_uid", session_uid))
    for _, run in results.sort(("start.time", 1)).items():
        yield run


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
