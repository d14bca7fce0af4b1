"""The gallery's filters and pages: parsed from a query string, applied to image records.

Every parameter is checked before anything is read; a bad one raises :class:`FilterError`
naming it and what it accepts (the API answers 400 with that message).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from spm_bluesky import schema
from spm_bluesky.autonomy.rules import Verdict
from spm_bluesky.console.data import CachedSession
from spm_bluesky.protocols import CLASSES
from spm_bluesky.report import ImageRecord
from spm_bluesky.report.session import CONDITIONING, IMPORTED

#: Every verdict an image can have (the loop's, and the two without a loop decision).
VERDICTS: tuple[str, ...] = (*(v.value for v in Verdict), CONDITIONING, IMPORTED)
#: Images per gallery page by default, and at most.
PER_PAGE = 48
MAX_PER_PAGE = 200


class FilterError(ValueError):
    """A gallery parameter that cannot be used; the message names it."""


class Unsure(StrEnum):
    """Which images by the assessor's out-of-distribution verdict: all, only, or none of
    those the loop did not act on (verdict ``unsure``)."""

    ANY = "any"
    ONLY = "only"
    HIDE = "hide"


class Order(StrEnum):
    """The gallery's order by instrument time."""

    NEWEST = "newest"
    OLDEST = "oldest"


@dataclass(frozen=True)
class GalleryFilter:
    """Which images the gallery shows, in which order, which page of them."""

    verdicts: frozenset[str] = frozenset()
    truth: str | None = None
    assessed: str | None = None
    p_min: float = 0.0
    p_max: float = 1.0
    unsure: Unsure = Unsure.ANY
    #: Simulated hours since the session's start.
    hours_min: float | None = None
    hours_max: float | None = None
    order: Order = Order.NEWEST
    page: int = 1
    per_page: int = PER_PAGE

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> GalleryFilter:
        """The filter a query string asks for (empty values count as absent)."""
        given = {key: value.strip() for key, value in query.items() if value.strip()}
        known = {"verdict", schema.TRUTH, "assessed", "p_min", "p_max", "unsure", "hours_min",
                 "hours_max", "order", "page", "per_page"}
        unknown = sorted(set(given) - known)
        if unknown:
            raise FilterError(f"unknown parameter {unknown[0]!r}: one of "
                              f"{', '.join(sorted(known))}")
        verdicts = frozenset(v for v in given.get("verdict", "").split(",") if v)
        for verdict in sorted(verdicts):
            _one_of("verdict", verdict, VERDICTS)
        truth = given.get(schema.TRUTH)
        assessed = given.get("assessed")
        if truth is not None:
            _one_of(schema.TRUTH, truth, CLASSES)
        if assessed is not None:
            _one_of("assessed", assessed, CLASSES)
        p_min = _number(given, "p_min", 0.0, 0.0, 1.0)
        p_max = _number(given, "p_max", 1.0, 0.0, 1.0)
        if p_min > p_max:
            raise FilterError(f"p_min {p_min:g} is above p_max {p_max:g}")
        hours_min = _optional_number(given, "hours_min")
        hours_max = _optional_number(given, "hours_max")
        if hours_min is not None and hours_max is not None and hours_min > hours_max:
            raise FilterError(f"hours_min {hours_min:g} is after hours_max {hours_max:g}")
        return cls(verdicts=verdicts, truth=truth, assessed=assessed, p_min=p_min,
                   p_max=p_max,
                   unsure=Unsure(_one_of("unsure", given.get("unsure", "any"),
                                         tuple(Unsure))),
                   hours_min=hours_min, hours_max=hours_max,
                   order=Order(_one_of("order", given.get("order", "newest"), tuple(Order))),
                   page=int(_number(given, "page", 1, 1, math.inf, integer=True)),
                   per_page=int(_number(given, "per_page", PER_PAGE, 1, MAX_PER_PAGE,
                                        integer=True)))

    def keeps(self, record: ImageRecord, session: CachedSession) -> bool:
        """True if ``record`` of ``session`` passes every filter."""
        if self.verdicts and record.verdict not in self.verdicts:
            return False
        if self.truth is not None and record.truth != self.truth:
            return False
        if self.assessed is not None and session.assessed_class(record) != self.assessed:
            return False
        p = record.p_good
        if (self.p_min > 0.0 or self.p_max < 1.0) and not self.p_min <= p <= self.p_max:
            return False  # a NaN p(good) passes only the full range
        is_unsure = record.verdict == Verdict.UNSURE
        if (self.unsure == Unsure.ONLY and not is_unsure) or (
                self.unsure == Unsure.HIDE and is_unsure):
            return False
        hours = session.data.hours(record.clock)
        if self.hours_min is not None and hours < self.hours_min:
            return False
        return self.hours_max is None or hours <= self.hours_max

    def select(self, session: CachedSession) -> tuple[list[ImageRecord], int]:
        """This page's records and how many images pass the filters in all."""
        kept = [r for r in session.data.images if self.keeps(r, session)]
        kept.sort(key=lambda r: (r.clock, r.run_uid, r.seq_num),
                  reverse=self.order == Order.NEWEST)
        start = (self.page - 1) * self.per_page
        return kept[start:start + self.per_page], len(kept)


def _one_of(name: str, value: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise FilterError(f"{name} {value!r} is not one of {', '.join(allowed)}")
    return value


def _number(given: Mapping[str, str], name: str, default: float, low: float, high: float,
            integer: bool = False) -> float:
    text = given.get(name)
    if text is None:
        return default
    what = "an integer" if integer else "a number"
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        raise FilterError(f"{name} {text!r} is not {what}") from None
    if not low <= value <= high:
        bound = f"at least {low:g}" if high == math.inf else f"{low:g} to {high:g}"
        raise FilterError(f"{name} {text!r} is not {what} {bound}")
    return value


def _optional_number(given: Mapping[str, str], name: str) -> float | None:
    if name not in given:
        return None
    return _number(given, name, 0.0, -math.inf, math.inf)
