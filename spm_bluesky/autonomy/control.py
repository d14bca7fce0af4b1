"""Pause, resume and stop a running session from outside its process (the web console).

The channel is two small JSON files per session in the data directory, both replaced
atomically (written beside, then renamed), so a reader never sees half a file:

- ``control/<session_uid>.json``, the *request*: the newest command a person gave, with a
  sequence number that grows by one per request. :func:`request` writes it (the console's
  side); it refuses, writing nothing, a session this data directory does not run and a
  command that does not fit the session's state (pause while paused, resume while running).
- ``control/<session_uid>.state.json``, the *state*: running, paused or stopped, with the pid
  of the ``spm-bluesky run`` process that writes it (:func:`read_status`); a state whose
  process is gone reads as stopped.

The run process's side is :class:`SessionControl`: a thread polls the request file (every
0.2 s) and asks the RunEngine for a deferred pause (at the next checkpoint) on pause or
stop; :func:`run_plan` runs the plan and, when the RunEngine paused for such a request,
waits for the next one: resume goes on from the checkpoint, stop ends the session as
Ctrl-C does. Every applied command is a document: a ``session_control`` run of one event
(command, who, when requested, when applied) sent down the session's own document path (the
journal, then Tiled), so the record survives like the images it interrupted.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import psutil
from bluesky.run_engine import TransitionError
from bluesky.utils import RunEngineInterrupted
from event_model import compose_run

from spm_bluesky import schema

logger = logging.getLogger(__name__)

#: The control files' directory inside the data directory.
CONTROL_DIR = "control"
#: How often the run process looks at the request file (s).
POLL_S = 0.2


class Command(StrEnum):
    """What a person can ask of a running session."""

    PAUSE = "pause"
    RESUME = "resume"
    STOP = "stop"


class SessionStatus(StrEnum):
    """Where a session run from this data directory stands."""

    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"


@dataclass(frozen=True)
class ControlRequest:
    """A person's command for a session: who gave it and when (unix time)."""

    session_uid: str
    command: Command
    who: str
    when: float


@dataclass(frozen=True)
class SessionState:
    """The state the run process last wrote, and the process that wrote it."""

    session_uid: str
    status: SessionStatus
    pid: int
    #: The process's start time (psutil's ``create_time``): a reused pid does not match.
    started: float
    #: Unix time the status was entered.
    since: float

    def alive(self) -> bool:
        """True if the process that wrote this state still runs."""
        try:
            return bool(abs(psutil.Process(self.pid).create_time() - self.started) < 1.0)
        except psutil.Error:
            return False


class ControlError(ValueError):
    """A control request that cannot be applied; the message says why. Nothing was written."""


class UnknownSession(ControlError):
    """No session with that uid was ever run from this data directory."""


class NotApplicable(ControlError):
    """The session is not in a state where the command means anything (stopped, or a pause
    while paused, a resume while running)."""


def control_dir(data_dir: Path | str) -> Path:
    """The control files' directory of ``data_dir``."""
    return Path(data_dir) / CONTROL_DIR


def _request_path(data_dir: Path | str, session_uid: str) -> Path:
    return control_dir(data_dir) / f"{session_uid}.json"


def _state_path(data_dir: Path | str, session_uid: str) -> Path:
    return control_dir(data_dir) / f"{session_uid}.state.json"


def _check_uid(session_uid: str) -> None:
    """A session uid names a file: letters, digits, ``-`` and ``_`` only."""
    if not session_uid or not all(c.isalnum() or c in "-_" for c in session_uid):
        raise UnknownSession(f"{session_uid!r} is not a session uid")


def _replace_json(path: Path, content: dict[str, Any]) -> None:
    """Write ``content`` to ``path`` so that readers see the old file or the new one whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    partial.write_text(json.dumps(content))
    os.replace(partial, path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        content = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    return content if isinstance(content, dict) else None


def read_status(data_dir: Path | str, session_uid: str) -> SessionState | None:
    """The session's state as its run process wrote it, STOPPED if that process is gone;
    None if no run process of this session ever wrote one here."""
    _check_uid(session_uid)
    content = _read_json(_state_path(data_dir, session_uid))
    if content is None:
        return None
    state = SessionState(session_uid, SessionStatus(content["status"]), int(content["pid"]),
                         float(content["started"]), float(content["since"]))
    if state.status != SessionStatus.STOPPED and not state.alive():
        return SessionState(session_uid, SessionStatus.STOPPED, state.pid, state.started,
                            state.since)
    return state


def _fits(command: Command, status: SessionStatus) -> bool:
    if status == SessionStatus.STOPPED:
        return False
    if command == Command.PAUSE:
        return status == SessionStatus.RUNNING
    if command == Command.RESUME:
        return status == SessionStatus.PAUSED
    return True


@contextlib.contextmanager
def _locked(data_dir: Path | str, session_uid: str) -> Iterator[None]:
    """Serialise writers of one session's request (two console tabs, say)."""
    directory = control_dir(data_dir)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / f"{session_uid}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def request(data_dir: Path, req: ControlRequest) -> int:
    """Ask the session's run process for ``req.command``; the request's sequence number.

    Raises :class:`UnknownSession` if no session ``req.session_uid`` was run from
    ``data_dir``, :class:`NotApplicable` if it is stopped or the command does not fit its
    state, :class:`ControlError` for an empty ``who``; nothing is written then.
    """
    command = Command(req.command)
    if not req.who.strip():
        raise ControlError("say who asks: the request's 'who' is empty")
    state = read_status(data_dir, req.session_uid)
    if state is None:
        raise UnknownSession(f"no session {req.session_uid} was run from {data_dir}")
    if not _fits(command, state.status):
        raise NotApplicable(f"session {req.session_uid} is {state.status}: cannot "
                            f"{command} it")
    with _locked(data_dir, req.session_uid):
        path = _request_path(data_dir, req.session_uid)
        seq = int((_read_json(path) or {}).get("seq", 0)) + 1
        _replace_json(path, {"seq": seq, **asdict(req), "command": str(command)})
    return seq


@dataclass(frozen=True)
class ReceivedRequest:
    """A request the run process read, with its sequence number."""

    seq: int
    request: ControlRequest


def _read_request(data_dir: Path, session_uid: str) -> ReceivedRequest | None:
    content = _read_json(_request_path(data_dir, session_uid))
    if content is None:
        return None
    try:
        req = ControlRequest(session_uid, Command(content["command"]), str(content["who"]),
                             float(content["when"]))
        return ReceivedRequest(int(content["seq"]), req)
    except (KeyError, ValueError) as err:
        logger.warning("ignoring an unreadable control request for %s: %s", session_uid, err)
        return None


class StopCause(StrEnum):
    """Why :func:`run_plan` stopped the session before its plan finished."""

    #: Ctrl-C, SIGTERM, or the plan's own pause (the assessor unsure of too many images).
    INTERRUPTED = "interrupted"
    #: A person's stop request.
    REQUESTED = "requested"


class SessionControl:
    """The run process's end of the channel for one session.

    ``RE`` is the session's RunEngine; ``record(name, doc)`` takes the documents of each
    applied command (the session's document path). Use as a context manager: entering
    writes the state ``running`` and starts polling (requests written before are not
    applied); leaving writes ``stopped``.
    """

    def __init__(self, data_dir: Path, session_uid: str, RE: Any,
                 record: Callable[[str, dict[str, Any]], None], *,
                 poll_s: float = POLL_S) -> None:
        _check_uid(session_uid)
        self.data_dir = data_dir
        self.session_uid = session_uid
        self.RE = RE
        self.record = record
        self.poll_s = poll_s
        self.requests: queue.Queue[ReceivedRequest] = queue.Queue()
        #: The pause or stop request the RunEngine was asked to pause for (not yet applied).
        self.pause_asked: ReceivedRequest | None = None
        self.terminated = threading.Event()
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._seen = 0
        self._thread = threading.Thread(target=self._poll, name=f"control-{session_uid[:8]}",
                                        daemon=True)

    def __enter__(self) -> SessionControl:
        last = _read_request(self.data_dir, self.session_uid)
        self._seen = last.seq if last is not None else 0
        self.set_status(SessionStatus.RUNNING)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(5 * self.poll_s + 1)
        self.set_status(SessionStatus.STOPPED)

    def set_status(self, status: SessionStatus) -> None:
        """Write the session's state for the console."""
        me = psutil.Process()
        _replace_json(_state_path(self.data_dir, self.session_uid),
                      {"status": str(status), "pid": me.pid, "started": me.create_time(),
                       "since": time.time()})

    def terminate(self) -> None:
        """What SIGTERM does: stop at the next checkpoint (or now, while paused)."""
        self.terminated.set()
        self._ask_pause()

    def _ask_pause(self) -> bool:
        """A deferred pause of the RunEngine; False if it is not running (paused, done)."""
        try:
            self.RE.request_pause(defer=True)
        except TransitionError:  # paused already, or idle
            return False
        return True

    def _poll(self) -> None:
        while not self._done.wait(self.poll_s):
            received = _read_request(self.data_dir, self.session_uid)
            if received is None or received.seq <= self._seen:
                continue
            self._seen = received.seq
            self.requests.put(received)
            if received.request.command != Command.RESUME:
                with self._lock:
                    if self.pause_asked is None and self._ask_pause():
                        self.pause_asked = received

    def next_request(self) -> ReceivedRequest | None:
        """The next unapplied request, waiting up to one poll period; None if none came."""
        try:
            return self.requests.get(timeout=self.poll_s)
        except queue.Empty:
            return None

    def applied(self, received: ReceivedRequest) -> None:
        """Record ``received`` as applied now: a ``session_control`` run on the document
        path."""
        req = received.request
        now = time.time()
        run = compose_run(metadata={
            schema.PLAN_NAME: schema.SESSION_CONTROL, schema.SESSION_UID: req.session_uid,
            schema.WHO: req.who}, time=now)
        source = "console"
        descriptor = run.compose_descriptor(name=schema.CONTROL, time=now, data_keys={
            schema.CONTROL_COMMAND: {"source": source, "dtype": "string", "shape": []},
            schema.CONTROL_WHO: {"source": source, "dtype": "string", "shape": []},
            schema.CONTROL_REQUESTED: {"source": source, "dtype": "number", "shape": [],
                                       "units": "s"},
            schema.CONTROL_APPLIED: {"source": source, "dtype": "number", "shape": [],
                                     "units": "s"},
            schema.CONTROL_SEQ: {"source": source, "dtype": "integer", "shape": []},
        })
        data = {schema.CONTROL_COMMAND: str(req.command), schema.CONTROL_WHO: req.who,
                schema.CONTROL_REQUESTED: req.when, schema.CONTROL_APPLIED: now,
                schema.CONTROL_SEQ: received.seq}
        event = descriptor.compose_event(data=data, timestamps=dict.fromkeys(data, now),
                                         seq_num=1, time=now)
        for name, doc in (("start", run.start_doc), ("descriptor", descriptor.descriptor_doc),
                          ("event", event), ("stop", run.compose_stop(time=now))):
            self.record(name, dict(doc))
        logger.info("session %s: %s by %s applied", req.session_uid, req.command, req.who)

    def take_pause(self) -> ReceivedRequest | None:
        """The pause or stop request the RunEngine just paused for (None: it paused for
        something else), forgotten with every request before it so that the next pause can
        be asked and no stale request decides it."""
        with self._lock:
            asked, self.pause_asked = self.pause_asked, None
        if asked is not None:
            later = []
            with contextlib.suppress(queue.Empty):
                while True:
                    received = self.requests.get_nowait()
                    if received.seq > asked.seq:
                        later.append(received)
            for received in later:
                self.requests.put(received)
        return asked


def run_plan(RE: Any, plan: Any, control: SessionControl) -> Any:
    """Run ``plan`` on ``RE`` under ``control``; the RunEngine's result, or a
    :class:`StopCause` once the session was stopped (``RE.stop()`` done).

    A pause the console asked for waits here for the next request: resume goes on, stop
    stops. Any other pause (Ctrl-C, SIGTERM, the plan's own) stops, as without control.
    """
    try:
        return RE(plan)
    except RunEngineInterrupted:
        pass
    while True:
        stopped = _after_pause(RE, control)
        if stopped is not None:
            return stopped
        try:
            return RE.resume()
        except RunEngineInterrupted:
            continue


def _after_pause(RE: Any, control: SessionControl) -> StopCause | None:
    """With the RunEngine paused: stop it (and say why), or None to resume it."""
    asked = control.take_pause()
    if asked is None or control.terminated.is_set():
        RE.stop()
        return StopCause.INTERRUPTED
    control.applied(asked)
    decided = asked
    if asked.request.command == Command.PAUSE:
        control.set_status(SessionStatus.PAUSED)
        waited = _wait_while_paused(control)
        if waited is None:
            RE.stop()
            return StopCause.INTERRUPTED
        control.applied(waited)
        decided = waited
    if decided.request.command == Command.STOP:
        RE.stop()
        return StopCause.REQUESTED
    control.set_status(SessionStatus.RUNNING)
    return None


def _wait_while_paused(control: SessionControl) -> ReceivedRequest | None:
    """The resume or stop request that ends a pause; None on Ctrl-C or SIGTERM."""
    try:
        while not control.terminated.is_set():
            received = control.next_request()
            if received is not None and received.request.command != Command.PAUSE:
                return received
    except KeyboardInterrupt:
        pass
    return None
