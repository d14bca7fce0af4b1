"""The hidden tip state, its image-relevant parameters and its conditioning dynamics.

The state is continuous (apexes, radius, adsorbate, stability, length); its *defects* are
four independent flags derived from it. A conditioning action removes each present defect
with a probability that depends on the defect and the action, and creates each absent one
with a (smaller) side-effect probability. Probabilities are smooth functions of the pulse
bias and duration or the dip depth, so off-grid actions work too. The table in
docs/reference/twin.md lists their values on the DeepSPM action set. Design goals (tested):

- no action repairs every defect (each has some defect it repairs with p < 0.3);
- strong actions make things worse (deep dips blunt, +-8 V pulses split the apex);
- a uniformly random policy needs >= 3x the actions of an oracle that knows the state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import StrEnum
from functools import cache

import numpy as np

from spm_bluesky.domain.actions import ActionKind, TipAction
from spm_bluesky.twin.config import TipConfig


class TipClass(StrEnum):
    """The tip classes an expert distinguishes; the value is the label used everywhere."""

    GOOD = "good"
    MULTI_APEX = "multi_apex"
    BLUNT = "blunt"
    ADSORBATE = "adsorbate"
    UNSTABLE = "unstable"


#: Defects in label priority: a tip with several defects is labelled by the first.
DEFECTS: tuple[TipClass, ...] = (
    TipClass.BLUNT,
    TipClass.MULTI_APEX,
    TipClass.ADSORBATE,
    TipClass.UNSTABLE,
)
#: Relative frequency of each defect when a tip degrades by itself.
SPONTANEOUS_WEIGHTS: dict[TipClass, float] = {
    TipClass.ADSORBATE: 0.35,
    TipClass.MULTI_APEX: 0.30,
    TipClass.UNSTABLE: 0.20,
    TipClass.BLUNT: 0.15,
}


class Adsorbate(StrEnum):
    """How a picked-up molecule changes the imaging contrast."""

    BRIGHT_CENTRE = "bright_centre"  # lobes fade, the centre lights up: round blobs
    INVERTED = "inverted"  # molecules appear as depressions

    @property
    def gains(self) -> tuple[float, float]:
        """(lobe gain, centre gain) applied to molecule features."""
        return {Adsorbate.BRIGHT_CENTRE: (0.35, 3.5), Adsorbate.INVERTED: (-0.6, -0.4)}[self]


@dataclass(frozen=True)
class Apex:
    """One apex: lateral offset from the main apex (m), weight, and retraction dz (m)."""

    dx: float
    dy: float
    weight: float
    dz: float = 0.0


MAIN_APEX = Apex(0.0, 0.0, 1.0, 0.0)


@dataclass(frozen=True)
class TipState:
    """The hidden tip state."""

    apexes: tuple[Apex, ...] = (MAIN_APEX,)
    radius: float = 0.25e-9
    adsorbate: Adsorbate | None = None
    #: Chance per scan line of a spontaneous (temporary) flip of the apex.
    instability: float = 0.0003
    #: Tip length offset (m): a change shows as a jump between scan lines.
    length: float = 0.0

    def defects(self, config: TipConfig) -> frozenset[TipClass]:
        """The defects this state has (empty for a good tip)."""
        found = set()
        if self.radius > config.blunt_threshold:
            found.add(TipClass.BLUNT)
        two_kappa = 2 * config.kappa
        if any(a.weight * math.exp(-two_kappa * a.dz) >= 0.15 for a in self.apexes[1:]):
            found.add(TipClass.MULTI_APEX)
        if self.adsorbate is not None:
            found.add(TipClass.ADSORBATE)
        if self.instability > config.unstable_threshold:
            found.add(TipClass.UNSTABLE)
        return frozenset(found)

    def tip_class(self, config: TipConfig) -> TipClass:
        """The class label: GOOD, or the highest-priority defect."""
        found = self.defects(config)
        return next((d for d in DEFECTS if d in found), TipClass.GOOD)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def pulse_strength(bias: float, duration: float) -> float:
    """Effective pulse magnitude (V): longer pulses act like slightly stronger ones."""
    return abs(bias) * max(0.0, 1.0 + 0.25 * math.log10(max(duration, 1e-3) / 0.2))


def repair_probability(
    defect: TipClass, kind: ActionKind, bias: float = 0.0, duration: float = 0.2, depth: float = 0.0
) -> float:
    """Chance that one action removes ``defect``."""
    e = pulse_strength(bias, duration)
    d = depth * 1e9  # nm
    if kind is ActionKind.STALL:
        return {TipClass.ADSORBATE: 0.03, TipClass.UNSTABLE: 0.05}.get(defect, 0.0)
    if defect is TipClass.ADSORBATE:
        if kind is ActionKind.PULSE:
            return 0.75 * _sigmoid((e - 3.0) / 0.6) if bias > 0 else 0.25 * _sigmoid(e - 4.0)
        return 0.15 if d <= 1.3 else 0.08
    if defect is TipClass.MULTI_APEX:
        if kind is ActionKind.PULSE:
            return 0.4 * _sigmoid(e - 6.0) if bias < 0 else 0.05
        return 0.65 * math.exp(-(((d - 1.8) / 0.7) ** 2))
    if defect is TipClass.BLUNT:
        if kind is ActionKind.PULSE:
            return 0.3 * _sigmoid((e - 7.0) / 0.7)
        return 0.55 * _sigmoid((d - 2.2) / 0.3)
    if defect is TipClass.UNSTABLE:
        if kind is ActionKind.PULSE:
            return 0.6 * math.exp(-(((e - 4.0) / 1.5) ** 2))
        return 0.12 if d <= 1.3 else 0.06
    raise ValueError(f"not a defect: {defect}")


def creation_probability(
    defect: TipClass, kind: ActionKind, bias: float = 0.0, duration: float = 0.2, depth: float = 0.0
) -> float:
    """Chance that one action creates ``defect`` as a side effect."""
    if kind is ActionKind.STALL:
        return 0.0
    e = pulse_strength(bias, duration)
    d = depth * 1e9
    pulse = kind is ActionKind.PULSE
    if defect is TipClass.BLUNT:
        return 0.15 * _sigmoid((e - 7.0) / 0.5) if pulse else 0.3 * _sigmoid((d - 3.5) / 0.5)
    if defect is TipClass.MULTI_APEX:
        return 0.02 + 0.15 * _sigmoid((e - 6.5) / 0.5) if pulse else 0.04 + 0.12 * d / 5.0
    if defect is TipClass.ADSORBATE:
        return (0.12 if bias < 0 else 0.02) if pulse else 0.06
    if defect is TipClass.UNSTABLE:
        return 0.03 + 0.1 * _sigmoid((e - 6.0) / 0.7) if pulse else 0.05
    raise ValueError(f"not a defect: {defect}")


def good_tip(rng: np.random.Generator, config: TipConfig) -> TipState:
    """A fresh good tip."""
    return TipState(radius=float(rng.uniform(*config.good_radius)),
                    instability=config.good_instability)


def add_defect(
    state: TipState, defect: TipClass, rng: np.random.Generator, config: TipConfig
) -> TipState:
    """The state with ``defect`` present, its parameters drawn at random."""
    if defect is TipClass.BLUNT:
        return replace(state, radius=float(rng.uniform(*config.blunt_radius)))
    if defect is TipClass.MULTI_APEX:
        extra = []
        for _ in range(int(rng.integers(1, 3))):
            distance = rng.uniform(0.5e-9, 2.0e-9)
            angle = rng.uniform(0, 2 * np.pi)
            extra.append(Apex(float(distance * np.cos(angle)), float(distance * np.sin(angle)),
                              float(rng.uniform(0.35, 1.0)), float(rng.uniform(0.0, 0.3e-10))))
        return replace(state, apexes=(MAIN_APEX, *extra))
    if defect is TipClass.ADSORBATE:
        return replace(state, adsorbate=list(Adsorbate)[int(rng.integers(len(Adsorbate)))])
    if defect is TipClass.UNSTABLE:
        return replace(state, instability=float(rng.uniform(*config.unstable_instability)))
    raise ValueError(f"not a defect: {defect}")


def remove_defect(
    state: TipState, defect: TipClass, rng: np.random.Generator, config: TipConfig
) -> TipState:
    """The state with ``defect`` repaired."""
    if defect is TipClass.BLUNT:
        return replace(state, radius=float(rng.uniform(*config.good_radius)))
    if defect is TipClass.MULTI_APEX:
        return replace(state, apexes=(MAIN_APEX,))
    if defect is TipClass.ADSORBATE:
        return replace(state, adsorbate=None)
    if defect is TipClass.UNSTABLE:
        return replace(state, instability=config.good_instability)
    raise ValueError(f"not a defect: {defect}")


def degraded_tip(rng: np.random.Generator, config: TipConfig) -> TipState:
    """A deliberately degraded tip (DeepSPM's training mode): one defect, sometimes two."""
    state = good_tip(rng, config)
    count = 1 if rng.random() < 0.75 else 2
    for index in rng.choice(len(DEFECTS), size=count, replace=False):
        state = add_defect(state, DEFECTS[int(index)], rng, config)
    return state


def spontaneous_change(
    state: TipState, rng: np.random.Generator, config: TipConfig
) -> TipState:
    """A tip that degrades by itself while scanning: one new defect, weighted by frequency."""
    names = list(SPONTANEOUS_WEIGHTS)
    weights = np.array([SPONTANEOUS_WEIGHTS[d] for d in names])
    defect = names[int(rng.choice(len(names), p=weights / weights.sum()))]
    changed = add_defect(state, defect, rng, config)
    return replace(changed, length=changed.length + _length_jump(rng))


def flipped(state: TipState, rng: np.random.Generator) -> TipState:
    """A temporary alternative configuration of an unstable tip (a streak in the image)."""
    alternate = replace(state, length=state.length + _length_jump(rng))
    if rng.random() < 0.5:
        angle = rng.uniform(0, 2 * np.pi)
        ghost = Apex(float(0.8e-9 * np.cos(angle)), float(0.8e-9 * np.sin(angle)), 0.6, 0.0)
        alternate = replace(alternate, apexes=(*state.apexes, ghost))
    return alternate


def _length_jump(rng: np.random.Generator) -> float:
    """A random change of tip length, 0.3 to 1.5 A either way."""
    return float(rng.choice([-1.0, 1.0]) * rng.uniform(0.3e-10, 1.5e-10))


def apply_action(
    state: TipState,
    action: TipAction,
    rng: np.random.Generator,
    config: TipConfig,
) -> TipState:
    """Apply one conditioning action: remove and create defects at random."""
    present = state.defects(config)
    new = state
    for defect in DEFECTS:
        if defect in present:
            p = repair_probability(defect, action.kind, action.bias, action.duration, action.depth)
            if rng.random() < p:
                new = remove_defect(new, defect, rng, config)
        else:
            p = creation_probability(defect, action.kind, action.bias, action.duration,
                                     action.depth)
            if rng.random() < p:
                new = add_defect(new, defect, rng, config)
    if action.kind is not ActionKind.STALL:
        new = replace(new, length=new.length + _length_jump(rng))
    return new


# --- the oracle: exact optimal policy over the 16 defect sets --------------------------

_SETS: tuple[frozenset[TipClass], ...] = tuple(
    frozenset(d for i, d in enumerate(DEFECTS) if mask >> i & 1) for mask in range(16)
)


def _transition_matrix(action: TipAction) -> np.ndarray:
    """P[s, s'] over defect sets for one action (defects change independently)."""
    matrix = np.ones((16, 16))
    for s, before in enumerate(_SETS):
        for t, after in enumerate(_SETS):
            for defect in DEFECTS:
                args = (defect, action.kind, action.bias, action.duration, action.depth)
                if defect in before:
                    p = repair_probability(*args)
                    matrix[s, t] *= p if defect not in after else 1 - p
                else:
                    p = creation_probability(*args)
                    matrix[s, t] *= p if defect in after else 1 - p
    return matrix


@cache
def _oracle_table(actions: tuple[TipAction, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Expected actions to a good tip per defect set, and the best action index per set."""
    matrices = np.stack([_transition_matrix(a) for a in actions])  # (A, 16, 16)
    values = np.zeros(16)
    for _ in range(2000):
        q = 1.0 + matrices @ values  # (A, 16)
        q[:, 0] = 0.0
        new = q.min(axis=0)
        if np.max(np.abs(new - values)) < 1e-9:
            break
        values = new
    q = 1.0 + matrices @ values
    return values, q.argmin(axis=0)


def _set_index(defects: frozenset[TipClass]) -> int:
    return sum(1 << i for i, d in enumerate(DEFECTS) if d in defects)


def oracle_action(
    state: TipState, actions: tuple[TipAction, ...], config: TipConfig
) -> TipAction:
    """The action that minimises the expected number of actions to a good tip."""
    _, best = _oracle_table(tuple(actions))
    return actions[int(best[_set_index(state.defects(config))])]


def oracle_expected_actions(defects: frozenset[TipClass], actions: tuple[TipAction, ...]) -> float:
    """The oracle's expected number of actions from a defect set to a good tip."""
    values, _ = _oracle_table(tuple(actions))
    return float(values[_set_index(defects)])


def dynamics_table(actions: tuple[TipAction, ...]) -> str:
    """Markdown table of repair / side-effect probabilities per action (docs/reference/twin.md)."""
    header = "| action | " + " | ".join(f"repairs {d.value}" for d in DEFECTS) + " | " + \
        " | ".join(f"creates {d.value}" for d in DEFECTS) + " |"
    lines = [header, "|" + "---|" * (1 + 2 * len(DEFECTS))]
    for action in actions:
        args = (action.kind, action.bias, action.duration, action.depth)
        repair = [repair_probability(d, *args) for d in DEFECTS]
        create = [creation_probability(d, *args) for d in DEFECTS]
        lines.append(f"| {action.name} | " + " | ".join(f"{p:.2f}" for p in repair + create)
                     + " |")
    return "\n".join(lines)
