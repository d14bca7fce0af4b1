"""A live progress line for an autonomous session: a callback on the document stream.

:class:`SessionTally` counts what a session did from its documents alone (images, kept
images, truly good images, images the assessor was unsure of, conditioning episodes,
actions, crashes, area moves, simulated time, the twin's true tip class).
:class:`ProgressLine` feeds the tally and redraws one line: on a terminal in place
(carriage return), otherwise a new line every ``interval`` seconds.

    RE.subscribe(ProgressLine(SessionTally(), hours=2))

Events a suspender made the plan take again (same stream and ``seq_num`` in a run) are
counted once. The tally reads live documents, not stored runs, so it cannot use
:class:`~spm_bluesky.storage.SessionReader`; it builds the same records from each event
(:mod:`spm_bluesky.storage.records`) and takes every other name from :mod:`spm_bluesky.schema`.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO, cast

from event_model import unpack_event_page
from event_model.documents import Document, Event, EventDescriptor, EventPage, RunStart

from spm_bluesky import schema
from spm_bluesky.autonomy.rules import Verdict
from spm_bluesky.protocols import GOOD
from spm_bluesky.storage.records import DecisionRecord, FaultRecord, TruthRecord


@dataclass
class CrashCounter:
    """Counts each crash once, whether seen as a verdict, a fault or only in the counter.

    A crash seen as a verdict or a fault also moves the instrument's ``Status:CrashCount``;
    a dip that crashed during conditioning shows only in the counter (the episode recovers
    by itself). The session report and :class:`SessionTally` count crashes this way.
    """

    known: int | None = None
    pending: int = 0

    def seen(self) -> None:
        """A crash recorded as a verdict or a fault."""
        self.pending += 1

    def reading(self, count: int) -> int:
        """A reading of ``Status:CrashCount``: how many crashes it shows that were not seen."""
        new = 0 if self.known is None else max(0, count - self.known - self.pending)
        self.known, self.pending = count, 0
        return new


@dataclass(eq=False)
class SessionTally:
    """Counts of a session, updated document by document (``tally(name, doc)``).

    ``kept``: images the loop kept (verdict ``kept``); ``truly_good``: those of them whose
    true tip class on the twin was ``good``. Crashes come from verdicts and faults and from
    the instrument's crash counter (a dip that crashed during conditioning), each once.
    """

    images: int = 0
    kept: int = 0
    truly_good: int = 0
    unsure: int = 0
    episodes: int = 0
    actions: int = 0
    crashes: int = 0
    area_moves: int = 0
    first_clock: float | None = None
    clock: float | None = None
    tip_state: str = "?"
    _streams: dict[str, tuple[str, str]] = field(default_factory=dict, repr=False)
    _seen: set[tuple[str, int]] = field(default_factory=set, repr=False)
    _kept_waiting: set[tuple[str, int]] = field(default_factory=set, repr=False)
    _crash_counter: CrashCounter = field(default_factory=CrashCounter, repr=False)

    @property
    def simulated_hours(self) -> float:
        """Instrument time from the session's start to the latest recorded clock."""
        if self.first_clock is None or self.clock is None:
            return 0.0
        return (self.clock - self.first_clock) / 3600.0

    @property
    def good_fraction(self) -> float:
        """Kept images over images (0 before the first image)."""
        return self.kept / self.images if self.images else 0.0

    def __call__(self, name: str, doc: Document) -> None:
        if name == "start":
            start: dict[str, Any] = dict(cast(RunStart, doc))
            plan = start.get(schema.PLAN_NAME, "")
            self.episodes += plan == schema.CONDITION_TIP
            self.area_moves += plan == schema.MOVE_AREA
            autonomy = start.get(schema.AUTONOMY) or {}
            start_clock = autonomy.get(schema.AUTONOMY_START_CLOCK)
            if self.first_clock is None and start_clock is not None:
                self.first_clock = float(start_clock)
        elif name == "descriptor":
            descriptor = cast(EventDescriptor, doc)
            self._streams[descriptor["uid"]] = (descriptor["run_start"],
                                                descriptor.get("name", schema.PRIMARY))
        elif name == "event":
            self._event(cast(Event, doc))
        elif name == "event_page":
            for event in unpack_event_page(cast(EventPage, doc)):
                self._event(event)

    def _event(self, doc: Event) -> None:
        key = (doc["descriptor"], int(doc["seq_num"]))
        if key in self._seen:
            return
        self._seen.add(key)
        run, stream = self._streams.get(doc["descriptor"], ("", ""))
        data, seq_num = doc["data"], int(doc["seq_num"])
        image = (run, seq_num)
        for clock_key in schema.CLOCK_KEYS:
            if clock_key in data:
                self._tick(float(data[clock_key]))
        if schema.SCAN_IMAGE in data:
            self.images += 1
        if stream == schema.DECISION:
            verdict = DecisionRecord.from_data(run, seq_num, data).verdict
            if verdict == Verdict.KEPT:
                self.kept += 1
                self._kept_waiting.add(image)
            self.unsure += verdict == Verdict.UNSURE
            self._crash_seen(verdict == Verdict.CRASH)
        elif stream == schema.TRUTH and (truth := TruthRecord.from_data(run, seq_num, data)):
            self.tip_state = truth.tip_state
            if image in self._kept_waiting:
                self._kept_waiting.discard(image)
                self.truly_good += self.tip_state == GOOD
        elif stream == schema.ACTION:
            self.actions += 1
        elif stream == schema.FAULT:
            self._crash_seen(FaultRecord.from_data(run, seq_num, data).kind == Verdict.CRASH)
        for count_key in schema.CRASH_COUNT_KEYS:
            if count_key in data:
                self.crashes += self._crash_counter.reading(int(data[count_key]))

    def _crash_seen(self, crashed: bool) -> None:
        if crashed:
            self.crashes += 1
            self._crash_counter.seen()

    def _tick(self, clock: float) -> None:
        if self.first_clock is None:
            self.first_clock = clock
        self.clock = clock if self.clock is None else max(self.clock, clock)

    def line(self, hours: float | None = None) -> str:
        """One line: simulated time, images, good fraction, true tip, actions ..."""
        done = f"{self.simulated_hours:5.2f}" + (f"/{hours:g}" if hours else "")
        return (f"sim {done} h | images {self.images:4d} | kept {self.kept:4d} "
                f"({self.good_fraction:4.0%}) | unsure {self.unsure} | "
                f"tip {self.tip_state:<10} | "
                f"episodes {self.episodes:3d} | actions {self.actions:4d} | "
                f"crashes {self.crashes} | area moves {self.area_moves}")


class ProgressLine:
    """Document callback: feeds ``tally`` and redraws its line on ``stream``.

    On a terminal the line is redrawn in place at most every ``min_interval`` s; elsewhere
    (a log file, a pipe) a new line is printed every ``interval`` s. ``close()`` prints the
    final state and ends the line.
    """

    def __init__(self, tally: SessionTally, *, stream: TextIO | None = None, label: str = "",
                 hours: float | None = None, min_interval: float = 0.2,
                 interval: float = 10.0) -> None:
        self.tally = tally
        self.stream = stream if stream is not None else sys.stderr
        self.label = label
        self.hours = hours
        self._tty = self.stream.isatty()
        self._every = min_interval if self._tty else interval
        self._last = 0.0
        self._width = 0

    def __call__(self, name: str, doc: Document) -> None:
        self.tally(name, doc)
        now = time.monotonic()
        if now - self._last >= self._every:
            self._last = now
            self._draw()

    def _draw(self) -> None:
        text = f"{self.label} {self.tally.line(self.hours)}".strip()
        if self._tty:
            self.stream.write("\r" + text.ljust(self._width))
            self._width = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Draw the final counts and end the line."""
        self._draw()
        if self._tty:
            self.stream.write("\n")
            self.stream.flush()
