"""The gallery's filters: each one narrows the images, a bad parameter is refused by name."""

from __future__ import annotations

import pytest

from spm_bluesky.console.data import CachedSession, Stamp
from spm_bluesky.console.filters import MAX_PER_PAGE, FilterError, GalleryFilter, Order, Unsure
from spm_bluesky.report import ImageRecord, SessionData, yield_figures

VERDICTS = ["kept", "bad", "debris", "unsure", "kept", "crash", "bad", "kept"]
TRUTH = ["good", "blunt", "good", "adsorbate", "good", "unstable", "multi_apex", "blunt"]
ASSESSED = ["good", "blunt", "blunt", "adsorbate", "good", "good", "multi_apex", "good"]
P_GOOD = [0.95, 0.10, 0.70, 0.50, 0.99, 0.02, 0.30, float("nan")]


@pytest.fixture
def session() -> CachedSession:
    data = SessionData("s1", {"autonomy": {"start_clock": 0.0}}, runs=1)
    for i, verdict in enumerate(VERDICTS):
        data.images.append(ImageRecord(
            run_uid="r1", seq_num=i + 1, clock=3600.0 * i, area=0, x=0.0, y=0.0, size=2e-8,
            p_good=P_GOOD[i], verdict=verdict, truth=TRUTH[i]))
    assessed = {("r1", i + 1): label for i, label in enumerate(ASSESSED)}
    return CachedSession(data, Stamp(1, "r1", 0.0, True, ()), yield_figures(data), 1, 1,
                         {(r.run_uid, r.seq_num): r for r in data.images}, assessed)


def seqs(chosen: GalleryFilter, session: CachedSession) -> list[int]:
    page, _ = chosen.select(session)
    return [r.seq_num for r in page]


def test_no_filter_shows_every_image_newest_first(session: CachedSession) -> None:
    page, total = GalleryFilter.parse({}).select(session)
    assert total == 8 and [r.seq_num for r in page] == [8, 7, 6, 5, 4, 3, 2, 1]
    assert seqs(GalleryFilter.parse({"order": "oldest"}), session) == [1, 2, 3, 4, 5, 6, 7, 8]


@pytest.mark.parametrize(("query", "expected"), [
    ({"verdict": "kept"}, [8, 5, 1]),
    ({"verdict": "debris,crash"}, [6, 3]),
    ({"truth": "good"}, [5, 3, 1]),
    ({"assessed": "good"}, [8, 6, 5, 1]),
    ({"assessed": "good", "truth": "good"}, [5, 1]),
    ({"p_min": "0.5", "p_max": "0.96"}, [4, 3, 1]),
    ({"p_min": "0.9"}, [5, 1]),
    ({"unsure": "only"}, [4]),
    ({"unsure": "hide", "verdict": "unsure,kept"}, [8, 5, 1]),
    ({"hours_min": "2", "hours_max": "4"}, [5, 4, 3]),
])
def test_each_filter_keeps_what_it_says(session: CachedSession, query: dict[str, str],
                                        expected: list[int]) -> None:
    assert seqs(GalleryFilter.parse(query), session) == expected


def test_pages_split_the_filtered_images(session: CachedSession) -> None:
    first = GalleryFilter.parse({"per_page": "3"})
    third = GalleryFilter.parse({"per_page": "3", "page": "3"})
    assert seqs(first, session) == [8, 7, 6] and seqs(third, session) == [2, 1]
    assert first.select(session)[1] == 8
    assert seqs(GalleryFilter.parse({"per_page": "3", "page": "9"}), session) == []


@pytest.mark.parametrize(("query", "message"), [
    ({"verdict": "kept,great"}, "verdict 'great' is not one of"),
    ({"truth": "sharp"}, "truth 'sharp' is not one of good"),
    ({"p_min": "x"}, "p_min 'x' is not a number"),
    ({"p_max": "1.5"}, "p_max '1.5' is not a number 0 to 1"),
    ({"p_min": "0.8", "p_max": "0.2"}, "p_min 0.8 is above p_max 0.2"),
    ({"hours_min": "5", "hours_max": "1"}, "hours_min 5 is after hours_max 1"),
    ({"page": "0"}, "page '0' is not an integer at least 1"),
    ({"per_page": str(MAX_PER_PAGE + 1)}, f"per_page '{MAX_PER_PAGE + 1}' is not an integer"),
    ({"unsure": "maybe"}, "unsure 'maybe' is not one of any, only, hide"),
    ({"sort": "p"}, "unknown parameter 'sort'"),
])
def test_a_bad_parameter_is_refused_by_name(query: dict[str, str], message: str) -> None:
    with pytest.raises(FilterError, match=message.replace("(", r"\(")):
        GalleryFilter.parse(query)


def test_empty_values_are_absent() -> None:
    chosen = GalleryFilter.parse({"verdict": "", "p_min": " ", "order": ""})
    assert chosen == GalleryFilter(unsure=Unsure.ANY, order=Order.NEWEST)
