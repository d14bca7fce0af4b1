"""A Gymnasium environment for tip conditioning over the in-process twin (DeepSPM's task).

An episode starts from a deliberately degraded tip (DeepSPM's training mode) and one image
taken with it. Each step applies one action of :data:`spm_bluesky.domain.actions.ACTIONS` at the
centre of the largest empty square of the last image, blocks the action's forbidden disc
in the approach-area mask, scans a fresh 10 nm frame at the next free cell (DeepSPM's
spiral) and asks the assessor. Reward: -1 per action, +10 when p(good) > 0.9, which also
ends the episode; at most 100 actions. Actions that need a bigger empty square than the
image offers are masked (``obs["action_mask"]``, ``info["action_mask"]``).

The observation holds the network input (the preprocessed image), the assessor's class
probabilities, and a short history: the last actions taken (one-hot) and the p(good) that
followed them. The true tip state is never in the observation; :attr:`ConditioningEnv.truth`
exposes it for the oracle policy and for evaluation only.

No torch here: the assessor is duck-typed (``assess(image_m, scan_size_m)``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from spm_bluesky.domain import processing
from spm_bluesky.domain.actions import ACTIONS, ActionKind, action_mask
from spm_bluesky.domain.area import CELL_SIZE, AreaMask
from spm_bluesky.protocols import CLASSES, HISTORY, Assessor, encode_history
from spm_bluesky.twin import Frame, Instrument, TipState, TwinConfig
from spm_bluesky.twin.tip import TipClass

#: Reward per action, and the bonus for a good tip (DeepSPM).
STEP_REWARD = -1.0
GOOD_REWARD = 10.0
#: p(good) above which the tip counts as repaired and the episode ends.
GOOD_THRESHOLD = 0.9
#: Most actions in one episode (DeepSPM moves to a new approach area after this).
MAX_ACTIONS = 100
#: Retries of the deliberate degradation until the assessor sees a bad tip (training mode).
DEGRADE_TRIES = 5


@dataclass(frozen=True)
class EnvConfig:
    """What shapes an episode besides its seed."""

    size: float = 10e-9
    pixels: int = 64
    max_actions: int = MAX_ACTIONS
    good_threshold: float = GOOD_THRESHOLD
    history: int = HISTORY
    twin: TwinConfig = field(default_factory=TwinConfig)


def episode_seed(seed: int, episode: int, split: int) -> int:
    """Twin seed of one episode: ``split`` 0 for training, 1 for held-out evaluation.

    Derived through ``SeedSequence`` so training and evaluation episodes never share a twin.
    """
    return int(np.random.SeedSequence([int(split), int(seed), int(episode)])
               .generate_state(1, np.uint32)[0])


def history_size(config: EnvConfig) -> int:
    """Length of the history vector: one-hot actions plus the p(good) after each."""
    return config.history * (len(ACTIONS) + 1)


class ConditioningEnv(gym.Env[dict[str, np.ndarray], int]):
    """One conditioning episode per :meth:`reset`; see the module docstring.

    ``reset(seed=s)`` builds a fresh twin with seed ``s`` (same seed, same episode for every
    policy). ``info`` carries ``action_mask``, ``p_good``, ``probabilities``, ``spot`` (where
    the action went), ``frame`` (the new frame's centre), ``free_square`` (m),
    ``true_class``, ``crashed`` and the cumulative ``damage`` (m^2) of the episode.
    """

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012 (gymnasium's convention)

    def __init__(self, assessor: Assessor, config: EnvConfig | None = None) -> None:
        self.assessor = assessor
        self.config = config or EnvConfig()
        n = processing.NETWORK_PIXELS
        # gymnasium's spaces are typed by their sample type (np.int64 here); the env acts on
        # plain ints and dicts of arrays.
        self.action_space = cast(spaces.Space[int], spaces.Discrete(len(ACTIONS)))
        self.observation_space = cast(spaces.Space[dict[str, np.ndarray]], spaces.Dict({
            "image": spaces.Box(-1.5, 1.5, (n, n), np.float32),
            "probabilities": spaces.Box(0.0, 1.0, (len(CLASSES),), np.float32),
            "history": spaces.Box(0.0, 1.0, (history_size(self.config),), np.float32),
            "action_mask": spaces.MultiBinary(len(ACTIONS)),
        }))
        self.instrument: Instrument | None = None
        self._mask: AreaMask | None = None
        self._last_image: np.ndarray | None = None
        self._frame = (0.0, 0.0)
        self._history: list[tuple[int, float]] = []
        self._free_square: tuple[float, tuple[float, float]] = (0.0, (0.0, 0.0))
        self.actions_taken = 0
        self.crashes = 0
        self._damage_start = 0.0

    # -- ground truth (oracle and evaluation only) ---------------------------------------

    @property
    def truth(self) -> TipState:
        """The hidden tip state (never part of the observation)."""
        if self.instrument is None:
            raise RuntimeError("call reset() first")
        return self.instrument.tip

    @property
    def true_class(self) -> TipClass:
        """The true tip class."""
        return self.truth.tip_class(self.config.twin.tip)

    @property
    def damage(self) -> float:
        """Sample area damaged during this episode (m^2)."""
        assert self.instrument is not None
        return self.instrument.damage_area - self._damage_start

    # -- gymnasium API -------------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """A fresh twin seeded ``seed``, its tip destroyed until the assessor sees it bad."""
        super().reset(seed=seed)
        twin_seed = int(self.np_random.integers(2**31)) if seed is None else int(seed)
        self.instrument = Instrument(twin_seed, self.config.twin)
        self._mask = AreaMask(area_index=0, cell_size=CELL_SIZE)
        self._history = []
        self.actions_taken = 0
        self.crashes = 0
        self._damage_start = self.instrument.damage_area
        assessment = None
        for _ in range(DEGRADE_TRIES):
            self.instrument.degrade_tip()
            assessment = self._scan_fresh()
            if assessment[0] <= 0.5:
                break
        assert assessment is not None
        return self._observe(assessment), self._info(assessment, None, 0.0)

    def step(
        self, action: int
    ) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Apply ``action`` (an index into ACTIONS), scan a fresh spot, assess it."""
        if self.instrument is None or self._last_image is None:
            raise RuntimeError("call reset() first")
        index = int(action)
        if not self.action_mask()[index]:
            raise ValueError(f"action {ACTIONS[index].name} is masked: it needs an empty "
                             f"square of {ACTIONS[index].free_square * 1e9:.0f} nm")
        spot, free = self._apply(index)
        self.actions_taken += 1
        assessment = self._scan_fresh()
        p_good = assessment[0]
        self._history.append((index, p_good))
        terminated = p_good > self.config.good_threshold
        truncated = not terminated and self.actions_taken >= self.config.max_actions
        reward = STEP_REWARD + (GOOD_REWARD if terminated else 0.0)
        info = self._info(assessment, spot, free)
        return self._observe(assessment), reward, terminated, truncated, info

    def action_mask(self) -> np.ndarray:
        """Allowed actions for the last image (the free-square rule), as bools."""
        return np.array(action_mask(self._free_square[0]), dtype=bool)

    # -- internals -----------------------------------------------------------------------

    def _apply(self, index: int) -> tuple[tuple[float, float], float]:
        """Do the action at the centre of the last image's largest empty square."""
        assert self.instrument is not None and self._mask is not None
        action = ACTIONS[index]
        free, (dx, dy) = self._free_square
        x, y = self._frame[0] + dx, self._frame[1] + dy
        if action.kind is ActionKind.PULSE:
            self.instrument.pulse(x, y, action.bias, action.duration)
        elif action.kind is ActionKind.DIP:
            self.instrument.dip(x, y, action.depth)
            if self.instrument.crashed:
                self.crashes += 1
                self.instrument.withdraw()
                self.instrument.approach()
        self._mask.block_disc(x, y, action.forbidden_radius)
        self._mask.position = (x, y)
        return (x, y), free

    def _scan_fresh(self) -> np.ndarray:
        """Scan the next free cell (a fresh approach area when none is left); assess it."""
        assert self.instrument is not None and self._mask is not None
        size = self.config.size
        cell = self._mask.next_cell(margin=size / 2)
        if cell is None:
            self.instrument.move_area()
            self._mask = AreaMask(area_index=self.instrument.area_index, cell_size=CELL_SIZE)
            cell = self._mask.next_cell(margin=size / 2)
            assert cell is not None
        image = self.instrument.scan(Frame(center_x=cell[0], center_y=cell[1], size=size,
                                           pixels=self.config.pixels))
        self._mask.block_disc(cell[0], cell[1], size / 2)
        self._mask.position = cell
        self._frame = cell
        self._last_image = image
        self._free_square = processing.largest_empty_square(image, size)
        assessment = self.assessor.assess(image, size)
        return np.array([assessment.probabilities[c] for c in CLASSES], dtype=np.float32)

    def _observe(self, probabilities: np.ndarray) -> dict[str, np.ndarray]:
        assert self._last_image is not None
        return {
            "image": processing.prepare(self._last_image, self.config.size)[0],
            "probabilities": probabilities.astype(np.float32),
            "history": encode_history(self._history, self.config.history),
            "action_mask": self.action_mask().astype(np.int8),
        }

    def _info(
        self, probabilities: np.ndarray, spot: tuple[float, float] | None, free: float
    ) -> dict[str, Any]:
        assert self.instrument is not None
        return {
            "action_mask": self.action_mask(),
            "p_good": float(probabilities[0]),
            "probabilities": dict(zip(CLASSES, map(float, probabilities), strict=True)),
            "spot": spot,
            "free_square": free,
            "frame": self._frame,
            "true_class": self.true_class.value,
            "crashed": self.crashes,
            "damage": self.damage,
            "image": self._last_image,
        }

