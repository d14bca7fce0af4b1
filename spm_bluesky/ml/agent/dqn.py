"""The conditioning agent: Double DQN over the assessor's CNN body (DeepSPM, section agent).

The Q-network reuses the assessor's convolutional body (:class:`~.model.TipNet` features,
global mean and max pooling), initialised from the shipped specialist (the network of the
shipped gate that judges every frame) and kept frozen, and adds a small head over
``[pooled features, class probabilities, history]`` (the probabilities are the gated
assessor's; the history is the last two actions, one-hot, and the p(good) after each).
Freezing the body lets training cache the pooled features of every stored image (and of its
rot180 / flip-lr / flip-ud copies, the replay augmentation DeepSPM used), so an update costs
a small MLP instead of a CNN.

Double DQN: the online network picks the next action, the target network (copied every
``target_every`` updates) values it; masked actions get minus infinity at selection and in
the target. Reward, discount, learning rate, batch, replay window and warm-up follow
DeepSPM (gamma 0.95, Adam 5e-4, batch 64, 15,000 entries, 2,000 before learning).
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from spm_bluesky.domain.actions import ACTIONS
from spm_bluesky.ml.assessor.gate import network_weights
from spm_bluesky.ml.assessor.model import STAGES, Stages, TipNet, stages_of
from spm_bluesky.ml.card import WEIGHTS_DIR, model_id_for
from spm_bluesky.protocols import CLASSES, HISTORY, Decision

#: The shipped agent weights and their card.
AGENT_WEIGHTS = WEIGHTS_DIR / "agent.pt"
MODEL_NAME = "dqn-agent"
#: Length of the non-image part of the state: class probabilities and history.
EXTRAS = len(CLASSES) + HISTORY * (len(ACTIONS) + 1)
HIDDEN = 128


def augmentations(image: np.ndarray) -> np.ndarray:
    """``(4, px, px)``: identity, rot180, flip-lr, flip-ud (DeepSPM's replay augmentation)."""
    return np.stack([image, image[::-1, ::-1], image[:, ::-1], image[::-1, :]])


class AgentNet(nn.Module):
    """Q-values ``(n, actions)`` from network inputs ``(n, 1, 64, 64)`` and extras."""

    def __init__(self, stages: Stages = STAGES) -> None:
        super().__init__()
        #: The body's widths: those of the assessor it was built on.
        self.stages = stages
        body = TipNet(stages)
        self.features = body.features
        #: Width of the pooled features (mean and max of the last block).
        self.width = body.head.in_features
        width = self.width
        self.head = nn.Sequential(nn.Linear(width + EXTRAS, HIDDEN), nn.ReLU(),
                                  nn.Linear(HIDDEN, HIDDEN), nn.ReLU(),
                                  nn.Linear(HIDDEN, len(ACTIONS)))

    def pooled(self, images: torch.Tensor) -> torch.Tensor:
        """Global mean and max pooled body features, as the assessor pools them."""
        maps = self.features(images)
        return torch.cat([maps.mean(dim=(2, 3)), maps.amax(dim=(2, 3))], dim=1)

    def q_from(self, pooled: torch.Tensor, extras: torch.Tensor) -> torch.Tensor:
        """Q-values from pooled features and extras (training uses cached features)."""
        return self.head(torch.cat([pooled, extras], dim=1))

    def forward(self, images: torch.Tensor, extras: torch.Tensor) -> torch.Tensor:
        """Q-values from images."""
        return self.q_from(self.pooled(images), extras)

    @classmethod
    def from_assessor(cls, assessor_weights: Path | str, seed: int = 0) -> AgentNet:
        """A fresh head (initialised from ``seed``) on the assessor's body (its weights read
        safely, no pickle); for a gate file, the body of its specialist."""
        state = torch.load(io.BytesIO(network_weights(assessor_weights).read_bytes()),
                           map_location="cpu", weights_only=True)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            net = cls(stages_of(state))
        body = {k.removeprefix("features."): v for k, v in state.items()
                if k.startswith("features.")}
        net.features.load_state_dict(body)
        return net


def extras_of(observation: dict[str, np.ndarray]) -> np.ndarray:
    """The non-image part of the state, float32."""
    return np.concatenate([observation["probabilities"], observation["history"]]).astype(
        np.float32)


def masked_argmax(q: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Best allowed action per row (masked actions get minus infinity)."""
    return q.masked_fill(~mask, float("-inf")).argmax(dim=1)


class DQNAgent:
    """The trained agent as a :class:`~.policies.Policy`: greedy over allowed Q-values.

    ``epsilon`` > 0 explores (training and online learning); ``values`` in each
    :class:`~.policies.Decision` are the Q-values (masked ones as -inf).
    """

    name = "agent"

    def __init__(self, net: AgentNet, model_id: str = "untrained", epsilon: float = 0.0,
                 seed: int = 0) -> None:
        self.net = net.eval()
        self.model_id = model_id
        self.epsilon = epsilon
        self._rng = np.random.default_rng(seed)

    def reset(self, seed: int | None = None) -> None:
        """Reseed the exploration (the greedy policy has no other state)."""
        if seed is not None:
            self._rng = np.random.default_rng(seed)

    def pooled(self, images: np.ndarray) -> np.ndarray:
        """Pooled body features of prepared images ``(n, 64, 64)``."""
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).unsqueeze(1)
            return self.net.pooled(x).numpy()

    def q_values(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        """Q-values of every action for one observation."""
        with torch.inference_mode():
            image = torch.from_numpy(np.ascontiguousarray(observation["image"],
                                                          dtype=np.float32))[None, None]
            extras = torch.from_numpy(extras_of(observation))[None]
            return self.net(image, extras)[0].numpy().astype(np.float64)

    def act(self, observation: dict[str, np.ndarray], mask: np.ndarray,
            pooled: np.ndarray | None = None) -> Decision:
        """Greedy (or epsilon-greedy) allowed action, with the Q-values.

        ``pooled`` (the image's body features, if already computed) saves a forward pass.
        """
        allowed = np.asarray(mask, dtype=bool)
        if pooled is None:
            q = self.q_values(observation)
        else:
            with torch.inference_mode():
                q = self.net.q_from(torch.from_numpy(pooled[None]),
                                    torch.from_numpy(extras_of(observation))[None])[0].numpy()
        values = tuple(float(v) if ok else float("-inf") for v, ok in zip(q, allowed,
                                                                          strict=True))
        if self.epsilon > 0 and self._rng.random() < self.epsilon:
            return Decision(int(self._rng.choice(np.flatnonzero(allowed))), values)
        return Decision(int(np.argmax(values)), values)


def load_agent(path: Path | str | None = None) -> DQNAgent:
    """The agent from a weight file (default: the shipped ``agent.pt``), read safely."""
    source = Path(path) if path is not None else AGENT_WEIGHTS
    if not source.is_file():
        raise FileNotFoundError(f"no agent weights at {source}: train them with "
                                "'spm-bluesky train agent'")
    data = source.read_bytes()
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    net = AgentNet(stages_of(state))
    net.load_state_dict(state)
    return DQNAgent(net, model_id_for(MODEL_NAME, data))


# --- replay and learning -----------------------------------------------------------------


@dataclass(frozen=True)
class DQNConfig:
    """DeepSPM's Double DQN settings (and our step budget)."""

    seed: int = 0
    env_steps: int = 20_000
    gamma: float = 0.95
    learning_rate: float = 5e-4
    batch_size: int = 64
    replay: int = 15_000
    learning_starts: int = 2_000
    target_every: int = 100
    epsilon_start: float = 1.0
    epsilon_end: float = 0.05
    epsilon_steps: int = 500
    updates_per_step: int = 1
    threads: int = 2


class Replay:
    """A ring buffer of transitions over cached pooled features (each stored 4x augmented)."""

    def __init__(self, capacity: int, width: int) -> None:
        self.capacity = capacity
        self.size = 0
        self._next = 0
        self.pooled = np.zeros((capacity, width), np.float32)
        self.extras = np.zeros((capacity, EXTRAS), np.float32)
        self.action = np.zeros(capacity, np.int64)
        self.reward = np.zeros(capacity, np.float32)
        self.next_pooled = np.zeros((capacity, width), np.float32)
        self.next_extras = np.zeros((capacity, EXTRAS), np.float32)
        self.next_mask = np.zeros((capacity, len(ACTIONS)), bool)
        self.done = np.zeros(capacity, np.float32)

    def add(self, pooled: np.ndarray, extras: np.ndarray, action: int, reward: float,
            next_pooled: np.ndarray, next_extras: np.ndarray, next_mask: np.ndarray,
            done: bool) -> None:
        """Store one transition per row of ``pooled`` / ``next_pooled`` (the augmentations)."""
        for row in range(len(pooled)):
            i = self._next
            self.pooled[i], self.extras[i], self.action[i] = pooled[row], extras, action
            self.reward[i], self.done[i] = reward, float(done)
            self.next_pooled[i], self.next_extras[i] = next_pooled[row], next_extras
            self.next_mask[i] = next_mask
            self._next = (i + 1) % self.capacity
            self.size = min(self.size + 1, self.capacity)

    def sample(self, rng: np.random.Generator, batch: int) -> dict[str, torch.Tensor]:
        """A uniform random batch as tensors."""
        idx = rng.integers(self.size, size=batch)
        return {name: torch.from_numpy(getattr(self, name)[idx]) for name in
                ("pooled", "extras", "action", "reward", "next_pooled", "next_extras",
                 "next_mask", "done")}


class Learner:
    """Double DQN updates of an :class:`AgentNet` head from a :class:`Replay`.

    Also used online: :meth:`observe` stores a live transition and learns from the buffer.
    """

    def __init__(self, net: AgentNet, config: DQNConfig) -> None:
        self.config = config
        self.net = net
        for parameter in net.features.parameters():
            parameter.requires_grad_(False)
        self.target = AgentNet(net.stages)
        self.target.load_state_dict(net.state_dict())
        self.optimiser = torch.optim.Adam(net.head.parameters(), lr=config.learning_rate)
        self.replay = Replay(config.replay, net.width)
        self.updates = 0
        self._rng = np.random.default_rng(config.seed)
        self.losses: list[float] = []

    def update(self) -> float | None:
        """One gradient step on a replay batch, once the warm-up is filled."""
        if self.replay.size < self.config.learning_starts:
            return None
        b = self.replay.sample(self._rng, self.config.batch_size)
        with torch.no_grad():
            online_next = self.net.q_from(b["next_pooled"], b["next_extras"])
            best = masked_argmax(online_next, b["next_mask"])
            target_next = self.target.q_from(b["next_pooled"], b["next_extras"])
            value = target_next.gather(1, best[:, None])[:, 0]
            y = b["reward"] + self.config.gamma * (1 - b["done"]) * value
        q = self.net.q_from(b["pooled"], b["extras"]).gather(1, b["action"][:, None])[:, 0]
        loss = nn.functional.smooth_l1_loss(q, y)
        self.optimiser.zero_grad()
        loss.backward()
        self.optimiser.step()
        self.updates += 1
        if self.updates % self.config.target_every == 0:
            self.target.load_state_dict(self.net.state_dict())
        loss_value = float(loss.detach())
        self.losses.append(loss_value)
        return loss_value

    def observe(self, agent: DQNAgent, observation: dict[str, np.ndarray], action: int,
                reward: float, next_observation: dict[str, np.ndarray], done: bool,
                pooled: np.ndarray | None = None, next_pooled: np.ndarray | None = None,
                ) -> None:
        """Store a transition (4 augmentations) and take ``updates_per_step`` steps.

        ``pooled`` / ``next_pooled``: the 4 augmentations' body features, if already known.
        """
        if pooled is None:
            pooled = agent.pooled(augmentations(observation["image"]))
        if next_pooled is None:
            next_pooled = agent.pooled(augmentations(next_observation["image"]))
        self.replay.add(pooled, extras_of(observation), action, reward, next_pooled,
                        extras_of(next_observation),
                        np.asarray(next_observation["action_mask"], bool), done)
        self.net.train()
        for _ in range(self.config.updates_per_step):
            self.update()
        self.net.eval()


@dataclass
class TrainedAgent:
    """What an agent training run produced: the greedy agent and the run's figures."""

    agent: DQNAgent
    env_steps: int
    episodes: int
    wall_time_s: float
    returns: list[float]


def epsilon_at(step: int, config: DQNConfig) -> float:
    """Linear decay from ``epsilon_start`` to ``epsilon_end`` over ``epsilon_steps``."""
    frac = min(step / max(config.epsilon_steps, 1), 1.0)
    return config.epsilon_start + frac * (config.epsilon_end - config.epsilon_start)


def train_dqn(
    env: Any,
    net: AgentNet,
    config: DQNConfig,
    seed_of: Callable[[int], int],
    learner: Learner | None = None,
    progress: bool = False,
    checkpoint: Callable[[int, DQNAgent], None] | None = None,
    checkpoint_every: int = 1000,
) -> TrainedAgent:
    """Train on ``env`` (a :class:`~.env.ConditioningEnv`) for ``config.env_steps`` steps.

    Episode ``k`` resets with seed ``seed_of(k)``. ``learner`` may come with a replay
    buffer already filled (``--from-tiled``). ``checkpoint(steps, greedy_agent)`` is called
    every ``checkpoint_every`` steps (benchmarks measure progress with it).
    """
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    learner = learner or Learner(net, config)
    agent = DQNAgent(net, seed=config.seed)
    start = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=config.env_steps, desc="train agent", unit="step")
    steps = episodes = 0
    returns: list[float] = []
    while steps < config.env_steps:
        observation, info = env.reset(seed=seed_of(episodes))
        agent.reset(seed_of(episodes))
        pooled = agent.pooled(augmentations(observation["image"]))
        done = truncated = False
        total = 0.0
        while not (done or truncated) and steps < config.env_steps:
            agent.epsilon = epsilon_at(steps, config)
            decision = agent.act(observation, info["action_mask"], pooled[0])
            next_observation, reward, done, truncated, info = env.step(decision.action)
            next_pooled = agent.pooled(augmentations(next_observation["image"]))
            learner.observe(agent, observation, decision.action, reward, next_observation,
                            done, pooled, next_pooled)
            observation, pooled = next_observation, next_pooled
            total += reward
            steps += 1
            if bar is not None:
                bar.update(1)
            if checkpoint is not None and steps % checkpoint_every == 0:
                checkpoint(steps, DQNAgent(net, f"step-{steps}"))
        episodes += 1
        returns.append(total)
        if bar is not None:
            recent = returns[-50:]
            bar.set_postfix(episodes=episodes, ret=f"{np.mean(recent):.2f}",
                            eps=f"{agent.epsilon:.2f}")
    if bar is not None:
        bar.close()
    agent.epsilon = 0.0
    return TrainedAgent(agent, steps, episodes, time.perf_counter() - start, returns)


def config_dict(config: DQNConfig) -> dict[str, Any]:
    """The configuration as JSON-ready data."""
    return asdict(config)


def set_threads(threads: int) -> None:
    """Run torch on ``threads`` CPU threads: how fast training and evaluation go, not what
    they give."""
    torch.set_num_threads(threads)
