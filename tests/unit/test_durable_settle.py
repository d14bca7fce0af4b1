"""Leaving a durable path waits as long as the drain makes progress, and no longer.

A drain stand-in sends a fixed number of documents per wait; the real drain and journal are
exercised by tests/system/test_durable_*.py."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from spm_bluesky.storage.drain import Drain, DrainStats
from spm_bluesky.storage.durable import DurablePath


@dataclass
class _SlowDrain:
    """Sends ``per_wait`` documents each time it is waited on, until ``backlog`` are sent;
    ``stall_after`` stops it sending (Tiled gone) after that many documents."""

    backlog: int
    per_wait: int
    stall_after: int | None = None
    stats: DrainStats = field(default_factory=DrainStats)
    waits: int = 0

    def wait_stored(self, timeout: float | None = None) -> bool:
        self.waits += 1
        limit = self.backlog if self.stall_after is None else self.stall_after
        self.stats.documents = min(self.stats.documents + self.per_wait, limit)
        return self.stats.documents >= self.backlog


def _path(drain: _SlowDrain) -> DurablePath:
    return DurablePath(journal=cast(Any, None), drain=cast(Drain, drain))


def test_a_backlog_longer_than_the_stall_time_is_sent_whole(caplog: pytest.LogCaptureFixture
                                                            ) -> None:
    drain = _SlowDrain(backlog=1000, per_wait=10)  # 100 waits, each of report_every
    with caplog.at_level(logging.WARNING):
        assert _path(drain).settle(stall_s=0.05, report_every=0.001)
    assert drain.stats.documents == 1000 and drain.waits == 100
    assert "documents sent so far" in caplog.text


def test_a_drain_that_sends_nothing_more_is_given_up_on() -> None:
    drain = _SlowDrain(backlog=1000, per_wait=10, stall_after=300)
    assert not _path(drain).settle(stall_s=0.05, report_every=0.001)
    assert drain.stats.documents == 300
