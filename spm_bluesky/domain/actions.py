"""The one definition of DeepSPM's tip-conditioning action set.

Used by the plans (what to write to the ``Tip:*`` PVs and which disc to block), the agent
(its discrete action space and action masking) and the twin's tests. Pure Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class ActionKind(StrEnum):
    """What an action physically does."""

    STALL = "stall"
    PULSE = "pulse"
    DIP = "dip"


#: Bias held during a dip (V): DeepSPM dips at 20 mV.
DIP_BIAS = 0.020
#: Default bias-pulse duration (s).
PULSE_TIME = 0.2


@dataclass(frozen=True)
class TipAction:
    """One conditioning action.

    ``forbidden_radius`` is the disc blocked around the spot afterwards (m);
    ``free_square`` is the edge of the empty, flat square the action needs (m).
    """

    name: str
    kind: ActionKind
    bias: float = 0.0
    duration: float = 0.0
    depth: float = 0.0
    forbidden_radius: float = 10e-9
    free_square: float = 0.0

    def allowed(self, largest_free_square: float) -> bool:
        """True if the largest empty square available is big enough for this action."""
        return self.free_square <= largest_free_square


def _pulse(bias: float) -> TipAction:
    return TipAction(
        name=f"pulse_{bias:+.1f}V",
        kind=ActionKind.PULSE,
        bias=bias,
        duration=PULSE_TIME,
        free_square=100e-9 if bias >= 8 else 0.0,
    )


def _dip(depth_nm: float, radius_nm: float, square_nm: float) -> TipAction:
    return TipAction(
        name=f"dip_{depth_nm:.1f}nm",
        kind=ActionKind.DIP,
        bias=DIP_BIAS,
        depth=depth_nm * 1e-9,
        forbidden_radius=radius_nm * 1e-9,
        free_square=square_nm * 1e-9,
    )


#: The DeepSPM action set, in a fixed order (the agent's action indices).
ACTIONS: tuple[TipAction, ...] = (
    TipAction(name="stall", kind=ActionKind.STALL, forbidden_radius=50e-9),
    _pulse(2.5),
    _pulse(4.0),
    _pulse(8.0),
    _pulse(-2.5),
    _pulse(-4.0),
    _pulse(-8.0),
    _dip(0.8, 10, 1),
    _dip(1.0, 10, 1),
    _dip(1.2, 10, 2),
    _dip(1.8, 10, 2),
    _dip(2.5, 25, 3),
    _dip(5.0, 25, 4),
)

ACTIONS_BY_NAME: dict[str, TipAction] = {action.name: action for action in ACTIONS}


def action_by_name(name: str) -> TipAction:
    """Look an action up by name, with a clear error listing the valid names."""
    try:
        return ACTIONS_BY_NAME[name]
    except KeyError:
        raise ValueError(
            f"unknown tip action {name!r}; valid actions: {', '.join(ACTIONS_BY_NAME)}"
        ) from None


def action_mask(largest_free_square: float) -> list[bool]:
    """Which actions of :data:`ACTIONS` are allowed, given the largest empty square (m)."""
    return [action.allowed(largest_free_square) for action in ACTIONS]
