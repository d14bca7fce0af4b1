"""Telling a person once that Tiled is away, and once that it answers again.

Tiled's client and TiledWriter retry a lost request themselves (ten tries over up to about
45 s) before they raise. A writer that waits for the error says nothing for that long, and
says nothing at all of an outage shorter than the retries (a forced append retry spanned a
whole 45 s outage in a suite run). :class:`OutageReport` reports an outage from whichever
shows first: a call to Tiled that raised, or one still waiting after ``stall_s`` seconds (a
watch thread looks); and its end from the next call that returns.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

#: A call to Tiled waiting this long (s) is reported as an outage while the libraries retry.
STALL_S = 10.0


class OutageCounts(Protocol):
    """Where the outages are counted (a drain's or a consumer's stats)."""

    outages: int


class OutageReport:
    """Logs ``away % reason`` once per outage and ``back`` when Tiled answers again.

    Wrap each call to Tiled in :meth:`waiting`; call :meth:`failed` when one raised; run
    :meth:`watch` in the background to report a call left waiting.
    """

    def __init__(self, log: logging.Logger, away: str, back: str, counts: OutageCounts,
                 stall_s: float = STALL_S) -> None:
        self.log, self.away, self.back, self.counts = log, away, back, counts
        self.stall_s = stall_s
        self._lock = threading.Lock()
        self._out = False
        self._waiting_since: float | None = None

    def failed(self, reason: str) -> None:
        """A call to Tiled raised: report the outage unless it is reported already."""
        with self._lock:
            if self._out:
                return
            self._out = True
            self.counts.outages += 1
        self.log.warning(self.away, reason)

    def answered(self) -> None:
        """A call to Tiled returned: report the end of an outage, if there was one."""
        with self._lock:
            was_out, self._out = self._out, False
        if was_out:
            self.log.warning(self.back)

    @contextmanager
    def waiting(self) -> Iterator[None]:
        """Mark a call to Tiled: the watch times it; returning counts as an answer."""
        self._waiting_since = time.monotonic()
        try:
            yield
        finally:
            self._waiting_since = None
        self.answered()

    def watch(self, stop: threading.Event, name: str) -> threading.Thread:
        """Start a daemon thread that reports a call waiting over ``stall_s`` (until ``stop``)."""
        def look() -> None:
            while not stop.wait(min(1.0, self.stall_s / 4)):
                since = self._waiting_since
                if since is not None and time.monotonic() - since > self.stall_s:
                    self.failed(f"no answer for {self.stall_s:g} s")

        thread = threading.Thread(target=look, name=name, daemon=True)
        thread.start()
        return thread
