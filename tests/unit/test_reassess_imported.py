"""``replay``'s listing of imported images: each one with its p(good), or why not, and counts."""

from __future__ import annotations

import math

from spm_bluesky.report import ImageRecord, Reassessed, Reassessment, Rejudged
from spm_bluesky.report.session import IMPORTED


def _record(seq_num: int, verdict: str, source: str | None = None) -> ImageRecord:
    return ImageRecord("0123456789ab", seq_num, 0.0, 0, 0.0, 0.0, 4e-9, math.nan, verdict,
                       source=source)


def _imported() -> list[Reassessed]:
    return [Reassessed(_record(1, IMPORTED, "a.sxm"), 0.95),
            Reassessed(_record(2, IMPORTED, "b.dat"), 0.25),
            Reassessed(_record(3, IMPORTED, "c.gwy"), math.nan, "expected a square frame")]


def test_an_imported_session_lists_every_image_and_no_loop_comparison() -> None:
    replay = Reassessment("s1", "stored", "other", 0.9, 10, [], 0.0, _imported(), 0.9)
    summary = replay.summary()
    assert (summary["imported"], summary["imported_assessed"],
            summary["imported_good_new"]) == (3, 2, 1)
    table = replay.table()
    assert table.startswith("Session s1: 0 images judged by the assessor, 3 imported images "
                            "re-assessed\n")
    assert "| kept |" not in table and "conditioning" not in table
    assert "2 assessed, mean p(good) 0.600, 1 at or above 0.9" in table
    rows = [line for line in table.splitlines() if line.endswith("| imported |")]
    assert [row.split(" | ")[1] for row in rows] == ["a.sxm", "b.dat", "c.gwy"]
    assert [row.split(" | ")[5] for row in rows] == [
        "0.950", "0.250", "not assessed: expected a square frame"]
    assert "... and 1 more" in replay.table(max_rows=2)


def test_a_session_with_both_compares_the_loop_first() -> None:
    judged = [Rejudged(_record(1, "kept"), 0.2, False)]
    replay = Reassessment("s2", "stored", "other", 0.9, 10, judged, 0.0, _imported()[:1], 0.9)
    table = replay.table()
    assert table.index("| kept | 1 | 0 |") < table.index("1 imported images (verdict")
    assert "1 images kept would be rejected" in table and "| a.sxm |" in table
