"""The drain says at once that Tiled is away, although the libraries retry for up to 45 s.

Tiled's client and TiledWriter retry a lost request themselves (a forced append retry spanned
a whole 45 s outage in a suite run, and the session never said Tiled was away). A Tiled
stand-in that does not answer until released shows the drain's own report: one warning
after ``stall_warning`` seconds, one when Tiled answers, and every run stored after."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest
from event_model import compose_run

from spm_bluesky.storage.drain import Drain, DrainStats
from spm_bluesky.storage.journal import Journal
from spm_bluesky.storage.outage import OutageReport
from tests.session_helpers import wait_until

STALL_S = 0.3


class _SilentTiled:
    """Holds every run whole (so the drain skips it), but answers only once released."""

    def __init__(self) -> None:
        self.released = threading.Event()
        self.asked: list[str] = []

    def include_data_sources(self) -> _SilentTiled:
        return self

    def __contains__(self, uid: str) -> bool:
        self.released.wait()
        self.asked.append(uid)
        return True

    def __getitem__(self, uid: str) -> Any:
        return type("Run", (), {"metadata": {"stop": {"uid": uid}}})()


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def _one_run_journaled(directory: Any) -> dict[str, Any]:
    """Journal one empty run in ``directory``; its start document."""
    bundle = compose_run(metadata={"session_uid": "s1"})
    with Journal(directory, sync=False) as journal:
        journal("start", bundle.start_doc)
        journal("stop", bundle.compose_stop())
    return dict(bundle.start_doc)


def test_a_pass_left_waiting_is_reported_once_and_the_answer_too(
        tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    start = _one_run_journaled(tmp_path)
    tiled = _SilentTiled()
    caplog.set_level(logging.WARNING, logger="spm_bluesky.storage.drain")
    drain = Drain(tmp_path, lambda: tiled, stall_warning=STALL_S).start()
    try:
        wait_until(lambda: _warnings(caplog), 5 * STALL_S + 2, "the outage's warning")
        time.sleep(4 * STALL_S)  # still waiting: no second report
        (away,) = _warnings(caplog)
        assert away.startswith(f"Tiled does not take documents (no answer for {STALL_S:g} s)")
        assert drain.stats.outages == 1 and not tiled.asked

        tiled.released.set()
        assert drain.wait_stored(10)
        wait_until(lambda: len(_warnings(caplog)) == 2, 5, "the answer's warning")
        assert _warnings(caplog)[1] == "Tiled answers again; sending the journal"
        assert tiled.asked == [start["uid"]] and drain.stats.runs_skipped == 1
    finally:
        tiled.released.set()
        drain.stop()


def test_a_quick_pass_is_no_outage(tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    _one_run_journaled(tmp_path)
    tiled = _SilentTiled()
    tiled.released.set()
    caplog.set_level(logging.WARNING, logger="spm_bluesky.storage.drain")
    drain = Drain(tmp_path, lambda: tiled, stall_warning=STALL_S).start()
    try:
        assert drain.wait_stored(10)
        time.sleep(4 * STALL_S)  # idle polls are passes too: none may count as a stall
    finally:
        drain.stop()
    assert _warnings(caplog) == [] and drain.stats.outages == 0


def test_an_outage_is_reported_once_however_often_it_shows(caplog: pytest.LogCaptureFixture
                                                             ) -> None:
    """Errors and waits of one outage make one report; a call that raised is no answer."""
    log = logging.getLogger("test.outage")
    caplog.set_level(logging.WARNING, logger="test.outage")
    stats = DrainStats()
    report = OutageReport(log, "away (%s)", "back", stats, stall_s=STALL_S)
    report.failed("ConnectError")
    with pytest.raises(OSError), report.waiting():
        raise OSError("refused")
    report.failed("ConnectError")
    assert _warnings(caplog) == ["away (ConnectError)"] and stats.outages == 1
    with report.waiting():
        pass
    report.answered()
    report.failed("ReadError")
    assert _warnings(caplog) == ["away (ConnectError)", "back", "away (ReadError)"]
    assert stats.outages == 2
