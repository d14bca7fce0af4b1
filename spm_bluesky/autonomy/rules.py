"""The autonomous session's rules and state, as pure Python (no Bluesky, no Tiled).

:class:`SessionConfig` is what a session was asked to do; :class:`SessionState` what it
has done so far (the approach-area mask, counters, instrument time), updated image by
image with :meth:`SessionState.record`; :func:`classify` is DeepSPM's verdict on one frame
(docs/reference/data-model.md, "verdict"), judged on the filtered P(tip good) of
:func:`update_belief`; an image the assessor is unsure of gets the verdict ``unsure``: it
neither moves the belief nor counts as bad, and :meth:`SessionState.count_unsure` says when
a run of them must pause the session for a person. The plan (``plans/autonomous.py``)
and the state rebuilt from Tiled (``autonomy_state.py``) share these, so a resumed session
decides as before.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from spm_bluesky.domain import limits, processing
from spm_bluesky.domain.area import CELL_SIZE, AreaMask
from spm_bluesky.protocols import UNSURE

#: An image whose raw height range is under this (m) is flat: the feedback is at a z limit.
FLAT_RANGE = 0.01e-9
#: Fraction of the z range near either end that counts as "at the extreme".
Z_EXTREME = 0.05


class Verdict(StrEnum):
    """What the loop made of one image."""

    KEPT = "kept"
    BAD = "bad"
    DEBRIS = "debris"
    CRASH = "crash"
    LOST_CONTACT = "lost_contact"
    #: The assessor is unsure of the image (out of distribution): not acted on.
    UNSURE = UNSURE


#: Unsure images in a row before the session pauses for a person.
UNSURE_LIMIT = 5


@dataclass(frozen=True)
class SessionConfig:
    """What a session does (recorded as ``autonomy`` in every start document)."""

    hours: float | None = None
    images: int | None = None
    bad_limit: int = 10
    size: float = 10e-9
    pixels: int = 64
    run_images: int = 50
    keep_threshold: float = 0.5
    good_threshold: float = 0.9
    assessor_prior: float = 0.2
    tip_hazard: float = 0.01
    max_actions: int = 100
    debris_threshold: float = 0.6e-9
    debris_radius: float = 10e-9
    crash_radius: float = 150e-9
    unsure_limit: int = UNSURE_LIMIT
    policy: str = ""
    start_clock: float = 0.0
    resumed: int = 0

    def __post_init__(self) -> None:
        if self.hours is None and self.images is None:
            raise ValueError("give hours or images (or both): when should the session stop?")
        if self.hours is not None and not (math.isfinite(self.hours) and self.hours > 0):
            raise ValueError(f"hours={self.hours!r} must be a positive number")
        for name in ("images", "run_images", "max_actions", "unsure_limit"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or int(value) != value
                                      or value < 1):
                raise ValueError(f"{name}={value!r} must be an integer of at least 1")
        if isinstance(self.bad_limit, bool) or int(self.bad_limit) != self.bad_limit \
                or self.bad_limit < 0:
            raise ValueError(f"bad_limit={self.bad_limit!r} must be an integer of at least 0")
        limits.check_frame(0.0, 0.0, self.size, self.pixels)
        for name in ("keep_threshold", "good_threshold", "assessor_prior"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be between 0 and 1")
        if not 0.0 < self.tip_hazard <= 0.5:
            raise ValueError(f"tip_hazard={self.tip_hazard!r} must be in (0, 0.5]")
        for name in ("debris_threshold", "debris_radius", "crash_radius"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0 < value <= limits.APPROACH_AREA_SIZE):
                raise ValueError(f"{name}={value!r} m must be positive and at most the area")

    def as_md(self) -> dict[str, Any]:
        """The ``autonomy`` start-document entry."""
        return asdict(self)

    @classmethod
    def from_md(cls, md: dict[str, Any]) -> SessionConfig:
        """Read back :meth:`as_md` (unknown keys are ignored)."""
        known = {k: v for k, v in md.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass(frozen=True)
class Judgement:
    """A frame's verdict, the radius (m) of the disc to block, its peak to peak (m)."""

    verdict: Verdict
    radius: float
    peak_to_peak: float


#: P(tip good) when nothing is known (session start, after conditioning or a crash).
UNKNOWN_TIP = 0.5
#: p(good) is clipped to [P_CLIP, 1 - P_CLIP] so that no single frame is taken as certain.
P_CLIP = 1e-4


def update_belief(belief: float, p_good: float, config: SessionConfig) -> float:
    """P(tip good) after one more frame: the forward step of a two-state hidden Markov model.

    The tip keeps its state from frame to frame except with probability ``tip_hazard``;
    the assessor's p(good) is calibrated under a class prior ``assessor_prior`` (its
    training balance), so it enters as the likelihood ratio ``odds(p) / odds(prior)``.
    One bad-looking frame from a tip that has looked good for a while is then still
    judged good, and one good-looking frame does not undo a run of bad ones. With
    ``tip_hazard`` 0.5 and ``assessor_prior`` 0.5 it reduces to DeepSPM's per-frame p(good).
    """
    hazard = config.tip_hazard
    prior = belief * (1.0 - hazard) + (1.0 - belief) * hazard
    p = min(max(float(p_good), P_CLIP), 1.0 - P_CLIP)
    odds = prior / (1.0 - prior) * (p / (1.0 - p)) \
        / (config.assessor_prior / (1.0 - config.assessor_prior))
    return odds / (1.0 + odds)


def classify(image: np.ndarray, p_good: float, z_range: float, config: SessionConfig,
             debris_retries: int, unsure: bool = False) -> Judgement:
    """DeepSPM's verdict on one frame, and the disc to block around it.

    Flat at full retraction: a crash (``crash_radius``); flat at full extension: lost
    contact; peak to peak over ``debris_threshold``: debris or a rough spot, blocking
    ``debris_radius x (debris_retries + 1)``; else, if the assessor is ``unsure`` of the
    image, unsure (its frame is blocked, the loop scans elsewhere); else kept or bad by
    ``keep_threshold`` on ``p_good`` (the session passes its filtered P(tip good),
    :func:`update_belief`).
    """
    heights = np.asarray(image, dtype=np.float64)
    if float(np.ptp(heights)) < FLAT_RANGE:
        z = float(np.median(heights))
        if z <= Z_EXTREME * z_range:
            return Judgement(Verdict.CRASH, config.crash_radius, 0.0)
        if z >= (1 - Z_EXTREME) * z_range:
            return Judgement(Verdict.LOST_CONTACT, config.size / 2, 0.0)
    ptp = processing.peak_to_peak(heights)
    if ptp > config.debris_threshold:
        return Judgement(Verdict.DEBRIS, config.debris_radius * (debris_retries + 1), ptp)
    if unsure:
        return Judgement(Verdict.UNSURE, config.size / 2, ptp)
    if p_good > config.keep_threshold:
        return Judgement(Verdict.KEPT, config.size / 2, ptp)
    return Judgement(Verdict.BAD, config.size / 2, ptp)


@dataclass
class SessionState:
    """Where a session stands: enough to go on after a stop, rebuilt from Tiled alone.

    ``elapsed`` is instrument time since the session's start (s), summed over clock steps
    so that an IOC restart (its clock starts again) does not end or stretch the session.
    """

    session_uid: str
    mask: AreaMask = field(default_factory=AreaMask)
    images: int = 0
    good_images: int = 0
    consecutive_bad: int = 0
    debris_retries: int = 0
    #: Unsure images since the last image the assessor was sure of, or the last pause.
    consecutive_unsure: int = 0
    unsure_images: int = 0
    tip_belief: float = UNKNOWN_TIP
    episodes: int = 0
    actions: int = 0
    crashes: int = 0
    clock: float | None = None
    elapsed: float = 0.0
    runs: int = 0
    config: SessionConfig | None = None

    def observe_clock(self, clock: float) -> None:
        """Advance ``elapsed`` by the step from the last clock seen (a reset counts from 0)."""
        if self.clock is not None:
            self.elapsed += clock - self.clock if clock >= self.clock else clock
        self.clock = float(clock)

    def record(self, verdict: Verdict, x: float, y: float, radius: float,
               belief: float | None = None) -> None:
        """Count one image of the scan loop and block its disc; a kept or bad image sets
        :attr:`tip_belief` to ``belief`` (its P(tip good)), a crash makes the tip unknown."""
        if verdict in (Verdict.KEPT, Verdict.BAD) and belief is not None:
            self.tip_belief = float(belief)
        elif verdict is Verdict.CRASH:
            self.tip_belief = UNKNOWN_TIP
        self.images += 1
        self.mask.block_disc(x, y, radius)
        self.mask.position = (x, y)
        if verdict is Verdict.DEBRIS:
            self.debris_retries += 1
            return
        self.debris_retries = 0
        if verdict is Verdict.KEPT:
            self.good_images += 1
            self.consecutive_bad = 0
        elif verdict is Verdict.BAD:
            self.consecutive_bad += 1
        elif verdict is Verdict.CRASH:
            self.crashes += 1

    def count_unsure(self, verdict: Verdict, limit: int) -> bool:
        """Count a run of unsure images; True when it reaches ``limit`` (the session pauses
        for a person, and the count starts again, so that resuming goes on).

        An image the assessor was sure of (kept or bad) ends the run; debris, crashes and
        lost contact leave it as it is. The plan calls this after each verdict, and the
        state rebuilt from the documents replays it on every recorded verdict.
        """
        if verdict is Verdict.UNSURE:
            self.unsure_images += 1
            self.consecutive_unsure += 1
        elif verdict in (Verdict.KEPT, Verdict.BAD):
            self.consecutive_unsure = 0
        if self.consecutive_unsure >= limit:
            self.consecutive_unsure = 0
            return True
        return False

    def new_area(self, area_index: int) -> None:
        """Start over in a fresh approach area (after a coarse move)."""
        self.mask = AreaMask(area_index=area_index, cell_size=CELL_SIZE)

    def finished(self, config: SessionConfig) -> bool:
        """True once the session has taken its images or spent its instrument hours."""
        if config.images is not None and self.images >= config.images:
            return True
        return config.hours is not None and self.elapsed >= config.hours * 3600.0

    def summary(self) -> dict[str, Any]:
        """The counters as a plain dict (the plan's return value, the CLI's last line)."""
        return {"session_uid": self.session_uid, "images": self.images,
                "good_images": self.good_images, "episodes": self.episodes,
                "actions": self.actions, "crashes": self.crashes,
                "area_index": self.mask.area_index, "free_cells": self.mask.free_cells,
                "elapsed_hours": self.elapsed / 3600.0, "runs": self.runs,
                "unsure_images": self.unsure_images}
