"""What the report knows about a session: typed records, read from Tiled by ``reader``.

Pure data and counting, so the figures, the HTML page and the re-assessment share one
model of the session. Conditioning steps and blocked discs are the storage records
(:class:`~spm_bluesky.storage.StepRecord`, :class:`~spm_bluesky.storage.Disc`); an image
joins its frame, assessment, decision and truth. Times are instrument (simulated) seconds;
:meth:`SessionData.hours` turns them into hours since the session's start.
"""

from __future__ import annotations

import math
from collections import Counter
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
    #: The height range (m) the loop measured for its verdict (the ``decision`` stream's
    #: peak to peak); None without a decision (conditioning, imported) or when not stored.
    peak_to_peak: float | None = None
    #: The thresholds of the run that decided (its ``autonomy`` configuration): the filtered
    #: P(tip good) above which an image was kept, the height range (m) over which it was
    #: debris; None without a decision or a recorded configuration.
    keep_threshold: float | None = None
    debris_threshold: float | None = None

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
    #: The episode's first image (the tip before any action) and its last (the tip after
    #: the last action); ``after`` is None when the episode scanned only one image.
    before: ImageRecord | None = None
    after: ImageRecord | None = None


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
    #: The images rejected, one count per reason, and the images of conditioning episodes
    #: (no verdict): with the kept, unsure and imported ones they add up to ``images``.
    bad_images: int = 0
    debris_images: int = 0
    crash_images: int = 0
    lost_contact_images: int = 0
    conditioning_images: int = 0

    def rows(self) -> list[tuple[str, str]]:
        """(label, value) pairs in the order shown: every image once under its verdict."""
        rows = [("simulated hours", f"{self.simulated_hours:.2f}"),
                ("images", str(self.images))]
        if self.imported_images:
            rows.append(("imported images (no verdict)", str(self.imported_images)))
        rows += [("good images (kept)", str(self.good_images)),
                 ("rejected: bad tip (P(tip good) too low)", str(self.bad_images)),
                 ("rejected: debris (height range too large)", str(self.debris_images)),
                 ("rejected: crash (flat, retracted)", str(self.crash_images)),
                 ("rejected: lost contact (flat, extended)", str(self.lost_contact_images))]
        if self.unsure_scores:
            scores = np.asarray(self.unsure_scores)
            rows.append(("unsure images (not acted on)",
                         f"{len(scores)}: scores {np.nanmin(scores):.0f} to "
                         f"{np.nanmax(scores):.0f}, median {np.nanmedian(scores):.0f}"))
        rows.append(("conditioning images (no verdict)", str(self.conditioning_images)))
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
    verdicts = Counter(r.verdict for r in data.images)
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
        bad_images=verdicts[Verdict.BAD],
        debris_images=verdicts[Verdict.DEBRIS],
        crash_images=verdicts[Verdict.CRASH],
        lost_contact_images=verdicts[Verdict.LOST_CONTACT],
        conditioning_images=verdicts[CONDITIONING],
    )


def session_title(data: SessionData) -> str:
    """What the session was: its uid, when it started, the twin's seed, its policy and its
    assessor (each said to be unknown when not recorded)."""
    models = data.model_ids
    date = data.first_time.replace("T", " ").replace("+00:00", " UTC") or "date unknown"
    seed = "not on the twin" if data.twin_seed is None else f"twin seed {data.twin_seed}"
    policy = models.get(schema.MODEL_POLICY) or data.autonomy.get("policy") or "none recorded"
    assessor = models.get(schema.MODEL_ASSESSOR) or "none recorded"
    return (f"Autonomous session {data.session_uid}, {date}, {seed}, "
            f"policy {policy}, assessor {assessor}")


def verdict_reason(record: ImageRecord) -> str:
    """One line saying why the loop decided what it did for ``record``, from stored data only.

    Kept and bad come from the filtered P(tip good) against the run's keep threshold (the
    per-image p(good) in sessions recorded before the filter); debris from the height range
    the loop measured against the debris threshold; crash and lost contact from a flat image
    at a z limit; unsure from the assessor's out-of-distribution score (its calibrated
    threshold is not stored, so only the score is given).
    """
    verdict = record.verdict
    if verdict in (Verdict.KEPT, Verdict.BAD):
        word = "kept" if verdict == Verdict.KEPT else "bad tip"
        if record.tip_belief is not None:
            value = f"P(tip good) {record.tip_belief:.2f}"
        else:
            value = f"p(good) {record.p_good:.2f}"
        if record.keep_threshold is None:
            return f"{word}: {value}"
        compare = ">" if verdict == Verdict.KEPT else "<="
        return f"{word}: {value} {compare} {record.keep_threshold:g}"
    if verdict == Verdict.DEBRIS:
        if record.peak_to_peak is None:
            return "debris: height range over the debris threshold (range not stored)"
        limit = ("" if record.debris_threshold is None
                 else f" > {record.debris_threshold * 1e9:.2g} nm")
        return f"debris: height range {record.peak_to_peak * 1e9:.2f} nm{limit}"
    if verdict == Verdict.CRASH:
        return "crash: flat image at full retraction"
    if verdict == Verdict.LOST_CONTACT:
        return "lost contact: flat image at full extension"
    if verdict == Verdict.UNSURE:
        score = ("" if np.isnan(record.unsure_score)
                 else f", out-of-distribution score {record.unsure_score:.0f}")
        return f"unsure: the assessor did not know the image{score}; not acted on"
    if verdict == CONDITIONING:
        return f"conditioning episode image: p(good) {record.p_good:.2f}, no verdict"
    if verdict == IMPORTED:
        return "imported file: no loop decided about it"
    return verdict


#: p(good) is clipped to [P_FLOOR, 1 - P_FLOOR] before its log-odds (about +-16): stored
#: probabilities round to 1.0 beyond that.
P_FLOOR = 1e-7
#: The best images' height range is at most this fraction of the debris threshold: a kept
#: image can hold a blob just under the threshold, which is no picture of a good tip.
CLEAN_FRACTION = 0.5
#: Episodes shown before and after: spread over the session when it has more.
EPISODES_SHOWN = 6


def best_score(record: ImageRecord) -> float:
    """How sure the assessor was that ``record`` shows a good tip: the log-odds of its p(good),
    ``log(p / (1 - p))``. p(good) reads 1.00 for most kept images; the log-odds still tells
    0.999 (6.9) from 0.99999 (11.5)."""
    p = min(max(record.p_good, P_FLOOR), 1.0 - P_FLOOR)
    return math.log(p / (1.0 - p))


def clean(record: ImageRecord) -> bool:
    """True unless the image's height range is over :data:`CLEAN_FRACTION` of its run's
    debris threshold (a blob almost big enough to count as debris), when both are stored."""
    if record.peak_to_peak is None or record.debris_threshold is None:
        return True
    return record.peak_to_peak <= CLEAN_FRACTION * record.debris_threshold


def best_images(data: SessionData, count: int = GALLERY_SIZE) -> list[ImageRecord]:
    """The ``count`` kept, :func:`clean` images with the highest :func:`best_score` (ties:
    the earlier), in time order.

    All kept images when none is clean; the images with a p(good) if none was kept.
    """
    kept = [r for r in data.images if r.kept]
    candidates = [r for r in kept if clean(r)] or kept or \
        [r for r in data.images if not math.isnan(r.p_good)]
    ranked = sorted(candidates, key=lambda r: (-best_score(r), r.clock))
    return sorted(ranked[:count], key=lambda r: r.clock)


def shown_episodes(data: SessionData,
                   count: int = EPISODES_SHOWN) -> list[ConditioningEpisode]:
    """At most ``count`` conditioning episodes, spread evenly over the session, in order."""
    episodes = data.episodes
    if len(episodes) <= count:
        return list(episodes)
    picks = np.linspace(0, len(episodes) - 1, count).round().astype(int)
    return [episodes[i] for i in dict.fromkeys(int(i) for i in picks)]
