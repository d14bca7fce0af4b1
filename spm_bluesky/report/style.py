"""How the report marks each kind of thing: one colour and one legend label per verdict and
per reason a disc was blocked, and the smallest font, shared by every figure and the page."""

from __future__ import annotations

from dataclasses import dataclass

from spm_bluesky import schema
from spm_bluesky.autonomy.rules import Verdict
from spm_bluesky.report.session import CONDITIONING, IMPORTED

#: The smallest font drawn (points at the saved size) and the size of a figure's title.
FONT = 9
TITLE_FONT = 12


@dataclass(frozen=True)
class Mark:
    """How one kind of thing is drawn: its colour and what the legend calls it."""

    colour: str
    label: str


#: Every verdict an image can have, in the order legends list them.
VERDICT_MARKS: dict[str, Mark] = {
    Verdict.KEPT: Mark("#2ca02c", "kept"),
    Verdict.BAD: Mark("#d62728", "rejected: bad tip"),
    Verdict.DEBRIS: Mark("#8c564b", "rejected: debris"),
    Verdict.CRASH: Mark("#111111", "rejected: crash"),
    Verdict.LOST_CONTACT: Mark("#9467bd", "rejected: lost contact"),
    Verdict.UNSURE: Mark("#ff7f0e", "unsure (not acted on)"),
    CONDITIONING: Mark("#1f77b4", "conditioning image (no verdict)"),
    IMPORTED: Mark("#7f7f7f", "imported (no verdict)"),
}

#: Why a disc of an approach area was blocked (a verdict, a fault kind or an action).
DISC_MARKS: dict[str, Mark] = {
    Verdict.DEBRIS: Mark("#8c564b", "blocked: debris"),
    Verdict.CRASH: Mark("#111111", "blocked: crash"),
    Verdict.LOST_CONTACT: Mark("#9467bd", "blocked: lost contact"),
    schema.ACTION: Mark("#1f77b4", "blocked: an action's forbidden radius"),
}


def verdict_mark(verdict: str) -> Mark:
    """The mark of ``verdict`` (grey, named as stored, for one the report does not know)."""
    return VERDICT_MARKS.get(verdict, Mark("#bbbbbb", verdict))


def disc_mark(reason: str) -> Mark:
    """The mark of a disc blocked for ``reason``."""
    return DISC_MARKS.get(reason, Mark("#999999", f"blocked: {reason or 'frame'}"))
