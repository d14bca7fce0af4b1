"""What the report knows about a session: typed records, read from Tiled by ``reader``.

Pure data and counting, so the figures, the HTML page and the re-assessment share one
model of the session. Conditioning steps and blocked discs are the storage records
(:class:`~spm_bluesky.storage.StepRecord`, :class:`~spm_bluesky.storage.Disc`); an image
joins its frame, assessment, decision and truth. Times are instrument (simulated) seconds;
:meth:`SessionData.hours` turns them into hours since the session's start.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeAlias

import numpy as np

from spm_bluesky import schema
from spm_bluesky.autonomy.rules import Verdict
from spm_bluesky.protocols import GOOD
from spm_bluesky.storage import Disc, StepRecord

#: p(good) above which the loop counts an image as good (DeepSPM), when a session's
#: ``autonomy`` metadata does not say.
GOOD_THRESHOLD = 0.9
#: Images shown in the gallery.
GALLERY_SIZE = 8
#: The verdict given to an image of a conditioning episode (no ``decision`` event).
CONDITIONING = "conditioning"
#: The verdict given to an imported file's image: no loop decided about it.
IMPORTED = "imported"


@dataclass(frozen=True)
class ImageRecord:
    """One scanned image of the session and what the loop decided about it."""

    run_uid: str
    seq_num: int
    clock: float
    area: int
    x: float
    y: float
    size: float
    p_good: float
    #: The loop's verdict (a :class:`~spm_bluesky.autonomy.rules.Verdict` value),
    #: :data:`CONDITIONING` for an image of a conditioning episode, or :data:`IMPORTED` for
    #: an image of an imported file.
    verdict: str
    #: The twin's true tip class; None when not recorded (not a twin session).
    truth: str | None = None
    #: P(tip good) after this image, the filtered p(good) the verdict used; None when not
    #: recorded (a conditioning image, or a session from before the filter).
    tip_belief: float | None = None
    #: The file an imported image came from; None for an image the session scanned.
    source: str | None = None
    #: The assessor's out-of-distribution score (NaN when it has none).
    unsure_score: float = float("nan")

    @property
    def kept(self) -> bool:
        """True if the loop kept the image."""
        return self.verdict == Verdict.KEPT

    @property
    def imported(self) -> bool:
        """True if the image came from an imported file (no loop decided about it)."""
        return self.verdict == IMPORTED


#: An image record with its stored frame (heights in metres).
StoredImage: TypeAlias = tuple[ImageRecord, np.ndarray]


@dataclass(frozen=True)
class ConditioningEpisode:
    """One conditioning episode: its span in instrument time and whether it succeeded.

    (Not the agent evaluation's episode on the gym environment: this one is a stored
    ``condition_tip`` run of a session.)
    """

    start: float
    end: float
    success: bool


@dataclass
class SessionData:
    """Everything the report shows about one session (see ``reader.load_session``).

    ``metadata`` holds the first run's ``twin_seed``, ``model_ids`` and ``autonomy`` (the
    session's configuration as recorded in its start documents); ``runs``, ``first_time``
    and ``last_time`` describe the session's runs.
    """

    session_uid: str
    metadata: dict[str, Any]
    runs: int = 0
    first_time: str = ""
    last_time: str = ""
    images: list[ImageRecord] = field(default_factory=list)
    actions: list[StepRecord] = field(default_factory=list)
    discs: list[Disc] = field(default_factory=list)
    crashes: list[float] = field(default_factory=list)
    area_moves: list[float] = field(default_factory=list)
    episodes: list[ConditioningEpisode] = field(default_factory=list)
    start_clock: float = 0.0
    end_clock: float = 0.0

    def hours(self, clock: float) -> float:
        """Instrument seconds to hours since the session's start."""
        return (clock - self.start_clock) / 3600.0

    @property
    def keep_threshold(self) -> float:
        """p(good) above which the loop kept an image."""
        return float(self.autonomy.get("keep_threshold", GOOD_THRESHOLD))

    @property
    def good_threshold(self) -> float:
        """p(good) above which a conditioning episode ended with a good tip."""
        return float(self.autonomy.get("good_threshold", GOOD_THRESHOLD))

    @property
    def autonomy(self) -> dict[str, Any]:
        """The session's configuration (empty for runs outside an autonomous session)."""
        return dict(self.metadata.get(schema.AUTONOMY) or {})

    @property
    def model_ids(self) -> dict[str, str]:
        """The model ids the session ran with (assessor, policy)."""
        return dict(self.metadata.get(schema.MODEL_IDS) or {})

    @property
    def twin_seed(self) -> int | None:
        """The twin's seed; None when the session did not run on the twin."""
        seed = self.metadata.get(schema.TWIN_SEED)
        return None if seed is None else int(seed)

    @property
    def areas(self) -> list[int]:
        """The approach areas the session used, in order of first use."""
        seen: dict[int, None] = {}
        for record in sorted(self.images, key=lambda r: r.clock):
            seen.setdefault(record.area, None)
        for action in self.actions:
            seen.setdefault(action.area, None)
        return list(seen)


@dataclass(frozen=True)
class YieldFigures:
    """The session's yield: counts and the good images per simulated hour."""

    simulated_hours: float
    images: int
    good_images: int
    #: Kept images whose true tip class was good; None when the truth was not recorded.
    truly_good_images: int | None
    good_per_hour: float
    conditioning_episodes: int
    actions: int
    crashes: int
    area_moves: int
    #: Images of imported files (no verdict: counted apart from the kept ones).
    imported_images: int = 0
    #: The unsure scores of the images the loop did not act on (verdict ``unsure``).
    unsure_scores: tuple[float, ...] = ()

    def rows(self) -> list[tuple[str, str]]:
        """(label, value) pairs in the order shown."""
        rows = [("simulated hours", f"{self.simulated_hours:.2f}"),
                ("images", str(self.images))]
        if self.imported_images:
            rows.append(("imported images (no verdict)", str(self.imported_images)))
        rows.append(("good images (kept)", str(self.good_images)))
        if self.unsure_scores:
            scores = np.asarray(self.unsure_scores)
            rows.append(("unsure images (not acted on)",
                         f"{len(scores)}: scores {np.nanmin(scores):.0f} to "
                         f"{np.nanmax(scores):.0f}, median {np.nanmedian(scores):.0f}"))
        if self.truly_good_images is not None:
            rows.append(("kept with a truly good tip (twin)", str(self.truly_good_images)))
        rows += [("good images per simulated hour", f"{self.good_per_hour:.1f}"),
                 ("conditioning episodes", str(self.conditioning_episodes)),
                 ("conditioning actions", str(self.actions)),
                 ("crashes", str(self.crashes)),
                 ("area moves", str(self.area_moves))]
        return rows


def yield_figures(data: SessionData) -> YieldFigures:
    """Count the session's yield from its records."""
    hours = max(data.hours(data.end_clock), 0.0)
    kept = [r for r in data.images if r.kept]
    has_truth = any(r.truth is not None for r in data.images)
    return YieldFigures(
        simulated_hours=hours,
        images=len(data.images),
        good_images=len(kept),
        truly_good_images=sum(r.truth == GOOD for r in kept) if has_truth else None,
        good_per_hour=len(kept) / hours if hours > 0 else 0.0,
        conditioning_episodes=len(data.episodes),
        actions=len(data.actions),
        crashes=len(data.crashes),
        area_moves=len(data.area_moves),
        imported_images=sum(r.imported for r in data.images),
        unsure_scores=tuple(r.unsure_score for r in data.images
                            if r.verdict == Verdict.UNSURE),
    )


def best_images(data: SessionData, count: int = GALLERY_SIZE) -> list[ImageRecord]:
    """The kept images with the highest p(good) (ties: the earlier first); all images if
    none was kept."""
    kept = [r for r in data.images if r.kept] or list(data.images)
    return sorted(kept, key=lambda r: (-r.p_good, r.clock))[:count]
