"""What if the session had used another assessor? Re-assess its stored images and compare.

A what-if over the images taken: after a different decision the real session would have
scanned other places, so only the decisions about the same images are compared, and the
conditioning starts are found again with the loop's rule over the stored image sequence.
Images of imported files (``spm-bluesky import``) had no decision: each is re-assessed and
listed with its p(good), with "imported" where a verdict would be.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from spm_bluesky import schema
from spm_bluesky.autonomy.rules import UNKNOWN_TIP, SessionConfig, Verdict, update_belief
from spm_bluesky.protocols import GOOD, Assessor
from spm_bluesky.report.reader import fetch_images, load_session
from spm_bluesky.report.session import GOOD_THRESHOLD, IMPORTED, ImageRecord

if TYPE_CHECKING:
    from bluesky_tiled_plugins.clients.catalog_of_bluesky_runs import CatalogOfBlueskyRuns

#: Verdicts the assessor decides (the others come from the image or the instrument).
JUDGED_VERDICTS = frozenset({Verdict.KEPT, Verdict.BAD})
#: DeepSPM's default: conditioning after more than this many bad images in a row.
BAD_LIMIT = 10


@dataclass(frozen=True)
class Rejudged:
    """One judged image with the stored p(good) and the other model's."""

    record: ImageRecord
    p_new: float
    kept_new: bool

    @property
    def flipped(self) -> bool:
        """True if the other model's verdict differs from the stored one."""
        return self.kept_new != self.record.kept


@dataclass(frozen=True)
class Reassessed:
    """One imported image (no stored verdict) and the other model's p(good) for it; NaN,
    with the assessor's ``reason``, when the assessor cannot judge the image (not square,
    not heights in metres, unscanned lines)."""

    record: ImageRecord
    p_new: float
    reason: str | None = None

    @property
    def assessed(self) -> bool:
        """True if the assessor judged the image."""
        return self.reason is None


@dataclass(frozen=True)
class Reassessment:
    """How the decisions of a session would have differed with another assessor.

    Only images the assessor decided (verdict kept or bad) are compared; conditioning starts
    are found with the loop's rule (more than ``bad_limit`` bad images in a row) over the
    stored image sequence, for both models, so the two columns are comparable.
    """

    session_uid: str
    stored_model: str
    new_model: str
    keep_threshold: float
    bad_limit: int
    images: list[Rejudged]
    start_clock: float
    #: The images of imported files, each re-assessed (no verdict to compare with).
    imported: list[Reassessed] = field(default_factory=list)
    #: p(good) from which an imported image is counted as called good.
    good_threshold: float = GOOD_THRESHOLD

    def conditioning_starts(self, new: bool) -> list[int]:
        """Indices into ``images`` after which a conditioning episode would start, with the
        ``new`` model's verdicts or the stored ones."""
        starts, bad_in_a_row = [], 0
        for i, item in enumerate(self.images):
            kept = item.kept_new if new else item.record.kept
            bad_in_a_row = 0 if kept else bad_in_a_row + 1
            if bad_in_a_row > self.bad_limit:
                starts.append(i)
                bad_in_a_row = 0
        return starts

    def summary(self) -> dict[str, int]:
        """Counts: kept and rejected by each model, flips both ways, conditioning starts."""
        flips = [i for i in self.images if i.flipped]
        return {"images": len(self.images),
                "kept_stored": sum(i.record.kept for i in self.images),
                "kept_new": sum(i.kept_new for i in self.images),
                "kept_to_rejected": sum(i.record.kept for i in flips),
                "rejected_to_kept": sum(not i.record.kept for i in flips),
                "conditioning_stored": len(self.conditioning_starts(new=False)),
                "conditioning_new": len(self.conditioning_starts(new=True)),
                "imported": len(self.imported),
                "imported_assessed": sum(i.assessed for i in self.imported),
                "imported_good_new": sum(i.assessed and i.p_new >= self.good_threshold
                                         for i in self.imported)}

    def table(self, max_rows: int = 30) -> str:
        """Markdown: the counts side by side, conditioning starts, the flipped images, then
        the imported images with their p(good) (each list at most ``max_rows``); for a session
        of imported images only, just those."""
        s = self.summary()
        head = (f"Session {self.session_uid}: {s['images']} images judged by the assessor, "
                f"{s['imported']} imported images re-assessed")
        if self.imported and not self.images:  # imported only: no loop rule applies
            return "\n".join([head, *self._imported_table(s, max_rows)])
        lines = [f"{head}; keep above P(tip good) {self.keep_threshold:g}, conditioning after "
                 f"more than {self.bad_limit} bad in a row"]
        lines += self._decisions_table(s, max_rows)
        return "\n".join(lines + self._imported_table(s, max_rows))

    def _decisions_table(self, s: dict[str, int], max_rows: int) -> list[str]:
        """Markdown lines: the loop's decisions, stored against replayed, and the flips."""
        lines = ["",
                 f"| | stored: {self.stored_model} | replayed: {self.new_model} |",
                 "|---|---:|---:|",
                 f"| kept | {s['kept_stored']} | {s['kept_new']} |",
                 f"| rejected | {s['images'] - s['kept_stored']} | "
                 f"{s['images'] - s['kept_new']} |"]
        if any(i.record.truth for i in self.images):
            good = [i for i in self.images if i.record.truth == GOOD]
            bad = [i for i in self.images if i.record.truth != GOOD]
            lines.append(f"| kept with a truly good tip (twin) | "
                         f"{sum(i.record.kept for i in good)} | "
                         f"{sum(i.kept_new for i in good)} |")
            lines.append(f"| kept with a truly bad tip (twin) | "
                         f"{sum(i.record.kept for i in bad)} | "
                         f"{sum(i.kept_new for i in bad)} |")
        lines.append(f"| conditioning would start | {s['conditioning_stored']} times | "
                     f"{s['conditioning_new']} times |")
        lines.append(f"| first conditioning after | {self._first_conditioning(False)} | "
                     f"{self._first_conditioning(True)} |")
        lines += ["", f"{s['kept_to_rejected']} images kept would be rejected, "
                      f"{s['rejected_to_kept']} rejected would be kept."]
        return lines + self._flips_table(max_rows)

    def _imported_table(self, s: dict[str, int], max_rows: int) -> list[str]:
        """Markdown lines: every imported image (at most ``max_rows``) with its p(good)."""
        if not self.imported:
            return []
        judged = [i.p_new for i in self.imported if i.assessed]
        mean = f"mean p(good) {np.mean(judged):.3f}, " if judged else ""
        lines = ["", f"{s['imported']} imported images (verdict: {IMPORTED}; no loop decided "
                     f"about them), re-assessed by {self.new_model}: "
                     f"{s['imported_assessed']} assessed, {mean}{s['imported_good_new']} at "
                     f"or above {self.good_threshold:g}", "",
                 "| # | file | run | event | size (nm) | p(good) replayed | verdict |",
                 "|---:|---|---|---:|---:|---|---|"]
        for n, item in enumerate(self.imported[:max_rows], 1):
            r = item.record
            p = f"{item.p_new:.3f}" if item.assessed else f"not assessed: {item.reason}"
            lines.append(f"| {n} | {r.source or '-'} | {r.run_uid[:8]} | {r.seq_num} | "
                         f"{r.size * 1e9:.3g} | {p} | {r.verdict} |")
        if len(self.imported) > max_rows:
            lines.append(f"\n... and {len(self.imported) - max_rows} more")
        return lines

    def _flips_table(self, max_rows: int) -> list[str]:
        """Markdown lines listing the images whose verdict flips (none if none does)."""
        flips = [(n, i) for n, i in enumerate(self.images, 1) if i.flipped]
        if not flips:
            return []
        lines = ["", "| # | time (h) | area | run | event | p(good) stored | p(good) "
                     "replayed | verdict stored -> replayed | true tip |",
                 "|---:|---:|---:|---|---:|---:|---:|---|---|"]
        for n, item in flips[:max_rows]:
            r = item.record
            lines.append(
                f"| {n} | {self._hours(r.clock):.2f} | {r.area} | "
                f"{r.run_uid[:8]} | {r.seq_num} | {r.p_good:.3f} | {item.p_new:.3f} | "
                f"{r.verdict} -> {'kept' if item.kept_new else 'bad'} | {r.truth or '-'} |")
        if len(flips) > max_rows:
            lines.append(f"\n... and {len(flips) - max_rows} more")
        return lines

    def _first_conditioning(self, new: bool) -> str:
        """When the first conditioning episode would start: image number and time."""
        starts = self.conditioning_starts(new)
        if not starts:
            return "never"
        record = self.images[starts[0]].record
        return f"image {starts[0] + 1} ({self._hours(record.clock):.2f} h)"

    def _hours(self, clock: float) -> float:
        return (clock - self.start_clock) / 3600


def reassess_session(client: CatalogOfBlueskyRuns, session_uid: str,
                   assessor: Assessor) -> Reassessment:
    """Re-assess every judged image and every imported image of the session with
    ``assessor``; the comparison.

    The new model's verdicts go through the session's own rule: its p(good) filtered into
    P(tip good) (``autonomy.rules.update_belief``), started unknown and again after each
    conditioning start the re-assessment finds, and kept above the session's threshold.
    Imported images had no decision: each gets the new model's p(good), unfiltered.
    """
    data = load_session(client, session_uid)
    threshold = data.keep_threshold
    config = SessionConfig.from_md({"images": 1, **data.autonomy})
    judged = [r for r in data.images if r.verdict in JUDGED_VERDICTS]
    rejudged = []
    belief, bad_in_a_row = UNKNOWN_TIP, 0
    for record, image in fetch_images(client, judged):
        p_new = assessor.assess(np.asarray(image, dtype=np.float64), record.size).p_good
        belief = update_belief(belief, p_new, config)
        rejudged.append(Rejudged(record, p_new, belief > threshold))
        bad_in_a_row = 0 if belief > threshold else bad_in_a_row + 1
        if bad_in_a_row > config.bad_limit:
            belief, bad_in_a_row = UNKNOWN_TIP, 0
    imported = [_reassess_imported(assessor, record, image) for record, image
                in fetch_images(client, [r for r in data.images if r.imported])]
    return Reassessment(
        session_uid=session_uid,
        stored_model=str(data.model_ids.get(schema.MODEL_ASSESSOR, "stored")),
        new_model=str(assessor.model_id), keep_threshold=threshold,
        bad_limit=int(data.autonomy.get("bad_limit", BAD_LIMIT)),
        images=rejudged, start_clock=data.start_clock, imported=imported,
        good_threshold=data.good_threshold)


def _reassess_imported(assessor: Assessor, record: ImageRecord,
                       image: np.ndarray) -> Reassessed:
    """The new model's p(good) for an imported image, or why it cannot give one."""
    try:
        return Reassessed(record, assessor.assess(np.asarray(image, dtype=np.float64),
                                                  record.size).p_good)
    except ValueError as err:  # the assessor's one-line refusal of a frame it cannot judge
        return Reassessed(record, float("nan"), str(err))
