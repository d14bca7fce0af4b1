"""The conditioning policies and the one registry that names them.

Baselines (uniformly random, an expert's escalation), the oracle that knows the true tip
state (evaluation only: the twin's truth is never a decision input on the instrument), and
:func:`policy_by_name`, which every command and the RunEngine session use to turn a name
into a :class:`~spm_bluesky.protocols.Policy`. The trained agent loads lazily, so naming a
baseline needs no torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np

from spm_bluesky.domain.actions import ACTIONS, ACTIONS_BY_NAME
from spm_bluesky.protocols import CLASSES, Assessment, Decision, Policy

if TYPE_CHECKING:
    from spm_bluesky.twin.config import TipConfig
    from spm_bluesky.twin.tip import TipState

#: The names :func:`policy_by_name` knows.
PolicyName = Literal["agent", "heuristic", "random", "oracle"]
POLICY_NAMES: tuple[str, ...] = get_args(PolicyName)
#: The policies a session on an instrument may use: all but the oracle, which reads the
#: twin's truth (evaluation only).
INSTRUMENT_POLICIES: tuple[str, ...] = ("agent", "heuristic", "random")
#: Model id of the oracle that reads the twin's ``Sim:TipState``.
ORACLE_MODEL_ID = "oracle:Sim:TipState"

#: An expert's escalation: mild pulses first, then deeper and deeper dips, the strongest
#: pulse last; repeated from the start when it runs out.
ESCALATION: tuple[str, ...] = (
    "pulse_+2.5V", "pulse_+4.0V", "pulse_-2.5V", "pulse_-4.0V",
    "dip_0.8nm", "dip_1.0nm", "dip_1.2nm", "dip_1.8nm", "dip_2.5nm", "dip_5.0nm",
    "pulse_-8.0V",
)


def _check_mask(mask: np.ndarray) -> np.ndarray:
    allowed = np.asarray(mask, dtype=bool)
    if allowed.shape != (len(ACTIONS),) or not allowed.any():
        raise ValueError(f"expected a mask over {len(ACTIONS)} actions with one allowed, "
                         f"got {allowed}")
    return allowed


class RandomPolicy:
    """Uniformly random over the allowed actions."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self._rng = np.random.default_rng(seed)

    def reset(self, seed: int | None = None) -> None:
        """Reseed (same seed, same choices)."""
        if seed is not None:
            self._rng = np.random.default_rng(seed)

    def act(self, observation: dict[str, np.ndarray], mask: np.ndarray) -> Decision:
        """A random allowed action."""
        allowed = np.flatnonzero(_check_mask(mask))
        return Decision(int(self._rng.choice(allowed)))


class HeuristicPolicy:
    """The scripted escalation of :data:`ESCALATION`, skipping what the mask forbids."""

    name = "heuristic"

    def __init__(self, sequence: Sequence[str] = ESCALATION) -> None:
        self._sequence = [ACTIONS.index(ACTIONS_BY_NAME[name]) for name in sequence]
        self._position = 0

    def reset(self, seed: int | None = None) -> None:
        """Start again from the mildest action."""
        self._position = 0

    def act(self, observation: dict[str, np.ndarray], mask: np.ndarray) -> Decision:
        """The next allowed action of the escalation."""
        allowed = _check_mask(mask)
        for offset in range(len(self._sequence)):
            index = self._sequence[(self._position + offset) % len(self._sequence)]
            if allowed[index]:
                self._position += offset + 1
                return Decision(index)
        return Decision(int(np.flatnonzero(allowed)[0]))


class OracleAssessor:
    """Says p(good) = 1 exactly when the tip is truly good (one-hot on the true class).

    ``truth`` gives the true class now (e.g. a TruthReader of ``Sim:TipState``).
    """

    model_id = ORACLE_MODEL_ID

    def __init__(self, truth: Callable[[], str]) -> None:
        self._truth = truth

    def assess(self, image_m: np.ndarray, scan_size_m: float) -> Assessment:
        """The true class as certain probabilities (the image is not looked at)."""
        label = self._truth()
        return Assessment({c: float(c == label) for c in CLASSES}, self.model_id)


class OraclePolicy:
    """Knows the true tip state: the allowed action with the fewest expected actions to a
    good tip (the twin's exact value iteration over the defect sets).

    ``tip`` gives the true :class:`~spm_bluesky.twin.tip.TipState` now (the gym env's
    ``truth``); :meth:`from_label` builds one from the true class alone (``Sim:TipState``
    over Channel Access).
    """

    name = "oracle"

    def __init__(self, tip: Callable[[], TipState], config: TipConfig,
                 model_id: str = "oracle") -> None:
        self._tip = tip
        self._config = config
        self.model_id = model_id

    @classmethod
    def from_label(cls, truth: Callable[[], str],
                   model_id: str = ORACLE_MODEL_ID) -> OraclePolicy:
        """An oracle that knows the true class (the most severe defect), not defects hidden
        behind it: each class stands for a good tip with that one defect."""
        from spm_bluesky.twin.config import TipConfig
        from spm_bluesky.twin.tip import TipClass, add_defect, good_tip

        config = TipConfig()
        rng = np.random.default_rng(0)
        good = good_tip(rng, config)
        states = {c.value: good if c is TipClass.GOOD else add_defect(good, c, rng, config)
                  for c in TipClass}
        return cls(lambda: states[truth()], config, model_id)

    def reset(self, seed: int | None = None) -> None:
        """Nothing to reset: the oracle is deterministic."""

    def act(self, observation: dict[str, np.ndarray], mask: np.ndarray) -> Decision:
        """The best allowed action for the true tip state."""
        from spm_bluesky.twin.tip import oracle_action

        allowed = tuple(a for a, ok in zip(ACTIONS, np.asarray(mask, bool), strict=True) if ok)
        if not allowed:
            raise ValueError("no action is allowed")
        return Decision(ACTIONS.index(oracle_action(self._tip(), allowed, self._config)))


class MissingAgentError(FileNotFoundError):
    """The trained agent's weight file is not there."""


#: How a message about missing agent weights ends by default: what else the user can do.
AGENT_HINT = "or choose another policy"


def agent_weights(path: Path | str | None = None, hint: str = AGENT_HINT) -> Path:
    """The agent weight file to load (default: the shipped ``agent.pt``); MissingAgentError,
    ending in ``hint``, if it does not exist. Needs no torch, so a command can check its
    options before anything starts."""
    from spm_bluesky.ml.card import WEIGHTS_DIR

    weights = Path(path) if path else WEIGHTS_DIR / "agent.pt"
    if not weights.is_file():
        raise MissingAgentError(
            f"the trained conditioning agent has no weight file at {weights}: train it with "
            f"`spm-bluesky train agent`, give one with --agent, {hint}")
    return weights


def policy_by_name(
    name: str,
    *,
    seed: int = 0,
    agent: Path | str | None = None,
    truth: Callable[[], str] | None = None,
) -> Policy:
    """The conditioning policy called ``name`` (one of :data:`POLICY_NAMES`).

    ``seed`` seeds the random policy; ``agent`` is the agent's weight file (default: the
    shipped one; MissingAgentError if absent; torch loads here); ``truth`` gives the twin's
    true tip class and is needed by the oracle only. ValueError for any other name.
    """
    if name == "random":
        return RandomPolicy(seed)
    if name == "heuristic":
        return HeuristicPolicy()
    if name == "agent":
        from spm_bluesky.ml.agent.dqn import AGENT_WEIGHTS, load_agent

        return load_agent(agent_weights(agent or AGENT_WEIGHTS))
    if name == "oracle":
        if truth is None:
            raise ValueError("the oracle policy reads the twin's true tip class: evaluation "
                             "only (give truth=..., e.g. a TruthReader)")
        return OraclePolicy.from_label(truth)
    raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(POLICY_NAMES)}")
