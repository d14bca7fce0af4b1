"""Tiled storage: the embedded server, the document writers, and reading stored runs back.

================  =================================================================================
``server``        the embedded Tiled server: config file, API key, subprocess, health check
``writer``        the TiledWriter subscription and the writer that keeps a backup of failed runs
``records``       typed records of stored events (frames, assessments, decisions, steps ...)
``read``          a session's runs as those records (:class:`SessionReader`), and their documents
``journal``       the local journal: every document fsynced before the RunEngine moves on
``drain``         fills Tiled from the journal in the background, across outages and restarts
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
    "ImageStack",
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
    "list_sessions",
    "load_backup",
    "load_or_create_api_key",
    "make_writer",
    "port_taken",
    "read_array_stream",
    "read_image_stream",
    "read_stream_table",
    "read_tail",
    "runs_by_session",
    "runs_of_plan",
    "start_server",
    "subscribe_writer",
    "tiled_answers",
]
