"""Online learning: the agent keeps learning from the transitions it lives through.

DeepSPM trained its agent on the running instrument, learning while the microscope
scanned. :class:`OnlineAgent` wraps a :class:`~.dqn.DQNAgent` and a :class:`~.dqn.Learner`
as a :class:`~.policies.LearningPolicy`: each :meth:`~OnlineAgent.act` call closes the
previous step's transition (reward -1, not terminal) and :meth:`~OnlineAgent.end_episode`
closes the last one (+10 and terminal when the tip was declared good). Every transition is
stored with its four augmentations and followed by ``updates_per_step`` Double DQN updates,
so the greedy policy improves between episodes. With ``save_to`` the head's weights are
written back after every episode (atomically), ready for :func:`~.dqn.load_agent`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from spm_bluesky.ml.agent.dqn import MODEL_NAME, DQNAgent, DQNConfig, Learner, augmentations
from spm_bluesky.ml.agent.env import GOOD_REWARD, STEP_REWARD
from spm_bluesky.ml.assessor.assessor import serialise
from spm_bluesky.ml.card import model_id_for
from spm_bluesky.protocols import Decision


class OnlineAgent:
    """A learning :class:`~.dqn.DQNAgent` (epsilon-greedy) for live conditioning episodes."""

    name = "agent"

    def __init__(
        self,
        agent: DQNAgent,
        config: DQNConfig | None = None,
        learner: Learner | None = None,
        save_to: Path | str | None = None,
    ) -> None:
        self.config = config or DQNConfig(learning_starts=256, epsilon_end=0.05)
        self.agent = agent
        self.agent.epsilon = self.config.epsilon_end
        self.learner = learner or Learner(agent.net, self.config)
        self.save_to = Path(save_to) if save_to is not None else None
        self.transitions = 0
        self._pending: tuple[dict[str, np.ndarray], int, np.ndarray] | None = None

    @property
    def model_id(self) -> str:
        """The starting model and how many live transitions it has learned from."""
        return f"{self.agent.model_id}+online{self.transitions}"

    def reset(self, seed: int | None = None) -> None:
        """Start an episode (an unfinished previous one is dropped, not learned from)."""
        self._pending = None
        self.agent.reset(seed)

    def act(self, observation: dict[str, np.ndarray], mask: np.ndarray) -> Decision:
        """Learn from the step that led here, then choose (epsilon-greedy)."""
        pooled = self.agent.pooled(augmentations(observation["image"]))
        if self._pending is not None:
            self._store(observation, pooled, STEP_REWARD, terminated=False)
        decision = self.agent.act(observation, mask, pooled[0])
        self._pending = (observation, decision.action, pooled)
        return decision

    def end_episode(self, observation: dict[str, np.ndarray], terminated: bool) -> None:
        """Close the last step: ``terminated`` when the tip was declared good."""
        if self._pending is not None:
            pooled = self.agent.pooled(augmentations(observation["image"]))
            reward = STEP_REWARD + (GOOD_REWARD if terminated else 0.0)
            self._store(observation, pooled, reward, terminated)
        self._pending = None
        if self.save_to is not None:
            self.save(self.save_to)

    def save(self, path: Path | str) -> str:
        """Write the current weights (atomically); return their model id."""
        data = serialise(self.agent.net)
        target = Path(path)
        partial = target.with_name(target.name + ".partial")
        partial.write_bytes(data)
        os.replace(partial, target)
        return model_id_for(MODEL_NAME, data)

    def _store(self, observation: dict[str, np.ndarray], pooled: np.ndarray, reward: float,
               terminated: bool) -> None:
        assert self._pending is not None
        previous, action, previous_pooled = self._pending
        self.learner.observe(self.agent, previous, action, reward, observation, terminated,
                             previous_pooled, pooled)
        self.transitions += 1

