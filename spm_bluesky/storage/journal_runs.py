"""A session's runs as the journal holds them: the same records as from Tiled.

:class:`JournalRun` gives a journaled run's streams as the typed records of
:class:`~spm_bluesky.storage.read.StoredRun` (frames, decisions, faults, steps ...), built
from its documents (the last take of every ``seq_num``). Resume reads these for the runs
Tiled does not hold whole yet, so a session's state comes from what is durable, not from
what reached Tiled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from event_model import unpack_event_page
from event_model.documents import EventPage, RunStart

from spm_bluesky import schema
from spm_bluesky.storage.journal import RecordKind, read_records
from spm_bluesky.storage.read import RunRecords
from spm_bluesky.storage.records import EventData


class JournalRun(RunRecords):
    """One run's documents from the journal, as records; ``stopped`` once its stop is read."""

    def __init__(self, start: RunStart) -> None:
        super().__init__(start)
        self.stop: dict[str, Any] | None = None
        self._stream_of: dict[str, str] = {}
        self._events: dict[str, dict[int, EventData]] = {}

    def add(self, name: str, doc: dict[str, Any]) -> None:
        """Take one more document of this run."""
        if name == "descriptor":
            self._stream_of[doc["uid"]] = doc.get("name", schema.PRIMARY)
        elif name == "event":
            stream = self._stream_of.get(doc["descriptor"])
            if stream is not None:  # a later take of a seq_num replaces the earlier one
                self._events.setdefault(stream, {})[int(doc["seq_num"])] = doc["data"]
        elif name == "event_page":
            for event in unpack_event_page(cast(EventPage, doc)):
                self.add("event", cast(dict[str, Any], event))
        elif name == "stop":
            self.stop = doc

    def rows(self, stream: str) -> list[tuple[int, EventData]]:
        """(seq_num, data) of every event of ``stream``, in order."""
        return sorted(self._events.get(stream, {}).items())


def journal_runs(directory: Path | str, session_uid: str) -> list[JournalRun]:
    """The runs of ``session_uid`` in the journal in ``directory``, oldest first."""
    runs: dict[str, JournalRun] = {}
    run_of_descriptor: dict[str, str] = {}
    for record in read_records(Path(directory)):
        if record.kind is not RecordKind.DOCUMENT:
            continue
        name, doc = record.name, record.body
        if name == "start":
            if doc.get(schema.SESSION_UID) == session_uid:
                runs[doc["uid"]] = JournalRun(cast(RunStart, doc))
            continue
        if name == "descriptor":
            run_of_descriptor[doc["uid"]] = doc["run_start"]
            uid = doc["run_start"]
        elif name in ("event", "event_page"):
            uid = run_of_descriptor.get(doc["descriptor"], "")
        else:
            uid = doc.get("run_start", "")
        if uid in runs:
            runs[uid].add(name, doc)
    return list(runs.values())
