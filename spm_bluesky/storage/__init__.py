"""Tiled storage: the embedded server, the document writers, and reading stored runs back.

================  =================================================================================
``server``        the embedded Tiled server: config file, API key, subprocess, health check
``writer``        the TiledWriter subscription and the writer that keeps a backup of failed runs
``records``       typed records of stored events (frames, assessments, decisions, steps ...)
``labels``        a person's labels of stored images (``label_images`` runs)
``read``          a session's runs as those records (:class:`SessionReader`), and their documents
``journal``       the local journal: every document fsynced before the RunEngine moves on
``drain``         fills Tiled from the journal in the background, across outages and restarts
``outage``        saying once that Tiled is away (an error, or a call left waiting) and back
``durable``       the journal and its drain together, as a session uses them
``journal_runs``  a session's runs as the journal holds them (for resume)
``preflight``     checks before a session acts: journal writable, disk space
``bus``           facility mode: the exchange, the queue, the message format, broker addresses
``bus_publish``   the session's side of facility mode: journal, then publish with confirms
``bus_consumer``  the Tiled consumer process: acknowledges only what Tiled has stored
================  =================================================================================

    from spm_bluesky.storage import SessionReader, connect
    for run in SessionReader(connect(uri, api_key), session_uid):
        print(run.plan_name, [d.verdict for d in run.decisions()])
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from spm_bluesky.storage.labels import (
        ImageLabel,
        LabelClass,
        LabelError,
        label_class,
        read_labels,
        write_labels,
    )
    from spm_bluesky.storage.read import (
        FeedResult,
        ImageStack,
        SessionNotFound,
        SessionReader,
        SessionSummary,
        StoredRun,
        dedupe_events,
        feed_documents,
        list_sessions,
        read_array_stream,
        read_image_stream,
        read_stream_table,
        runs_by_session,
        runs_of_plan,
    )
    from spm_bluesky.storage.records import (
        AssessmentRecord,
        DecisionRecord,
        Disc,
        EventData,
        FaultRecord,
        FrameRecord,
        StatusRecord,
        StepRecord,
        TruthRecord,
    )
    from spm_bluesky.storage.server import (
        TiledConfig,
        TiledServer,
        TiledServerError,
        connect,
        load_or_create_api_key,
        port_taken,
        read_tail,
        start_server,
        tiled_answers,
        unreachable,
    )
    from spm_bluesky.storage.writer import (
        WRITER_BATCH_SIZE,
        WRITER_MAX_ARRAY_SIZE,
        BackedUpTiledWriter,
        DocumentCallback,
        load_backup,
        make_writer,
        subscribe_writer,
    )

#: Each submodule and the public names it gives: a name is imported on first use, so a
#: command that needs only the server (``status``, ``down``, ``up``) does not load the
#: Bluesky-Tiled client stack (about 2 CPU seconds per process).
_EXPORTS: dict[str, tuple[str, ...]] = {
    "labels": (
        "ImageLabel", "LabelClass", "LabelError", "label_class", "read_labels", "write_labels",
    ),
    "read": (
        "FeedResult", "ImageStack", "SessionNotFound", "SessionReader", "SessionSummary",
        "StoredRun", "dedupe_events", "feed_documents", "list_sessions", "read_array_stream",
        "read_image_stream", "read_stream_table", "runs_by_session", "runs_of_plan",
    ),
    "records": (
        "AssessmentRecord", "DecisionRecord", "Disc", "EventData", "FaultRecord", "FrameRecord",
        "StatusRecord", "StepRecord", "TruthRecord",
    ),
    "server": (
        "TiledConfig", "TiledServer", "TiledServerError", "connect", "load_or_create_api_key",
        "port_taken", "read_tail", "start_server", "tiled_answers", "unreachable",
    ),
    "writer": (
        "WRITER_BATCH_SIZE", "WRITER_MAX_ARRAY_SIZE", "BackedUpTiledWriter", "DocumentCallback",
        "load_backup", "make_writer", "subscribe_writer",
    ),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str) -> Any:
    """Import the submodule that gives ``name`` (PEP 562), and keep the name here."""
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "WRITER_BATCH_SIZE",
    "WRITER_MAX_ARRAY_SIZE",
    "AssessmentRecord",
    "BackedUpTiledWriter",
    "DecisionRecord",
    "Disc",
    "DocumentCallback",
    "EventData",
    "FaultRecord",
    "FeedResult",
    "FrameRecord",
    "ImageLabel",
    "ImageStack",
    "LabelClass",
    "LabelError",
    "SessionNotFound",
    "SessionReader",
    "SessionSummary",
    "StatusRecord",
    "StepRecord",
    "StoredRun",
    "TiledConfig",
    "TiledServer",
    "TiledServerError",
    "TruthRecord",
    "connect",
    "dedupe_events",
    "feed_documents",
    "label_class",
    "list_sessions",
    "load_backup",
    "load_or_create_api_key",
    "make_writer",
    "port_taken",
    "read_array_stream",
    "read_image_stream",
    "read_labels",
    "read_stream_table",
    "read_tail",
    "runs_by_session",
    "runs_of_plan",
    "start_server",
    "subscribe_writer",
    "tiled_answers",
    "unreachable",
    "write_labels",
]
