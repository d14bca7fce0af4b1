"""Labelling a session's images in the console: the page, its list of images, storing marks.

A person marks each image good, multi_apex, blunt, adsorbate, unstable or unclear (keys 1-6
or g/m/b/a/u/x on the page, ``static/label.js``). Every mark is stored in Tiled by
:func:`spm_bluesky.storage.write_labels` (who, when, and the assessor verdict it answers:
model id, class and p(good), taken here from the stored assessment, not from the browser),
and is what ``spm-bluesky train assessor --from-tiled`` learns from.

=====================================================  =====================================
``GET /sessions/{uid}/label``                          the labelling page
``GET /api/sessions/{uid}/labels?order=&show=&offset=&limit=``
                                                       the session's images with the
                                                       assessor's verdict and the person's
                                                       label, and how many are labelled
``POST /api/sessions/{uid}/labels``                    store marks: ``{"who": NAME,
                                                       "labels": [{"run_uid", "seq_num",
                                                       "label", "when"}, ...]}``
=====================================================  =====================================

``order``: ``time`` (as scanned), ``disagreements`` (the images whose label differs from the
assessor's class first, then those not labelled), ``uncertain`` (p(good) nearest 0.5 first).
``show``: ``all``, ``unlabelled``, ``disagreements``. A request naming an unknown session or
image answers 404, a malformed one or an unknown class 400, each with a message saying what
is wrong; nothing is stored then (a batch is stored whole or not at all).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, cast

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from spm_bluesky import schema
from spm_bluesky.console.api import image_json
from spm_bluesky.console.auth import HEADER_CALLER, NAME_PATTERN, require_key
from spm_bluesky.console.config import ConsoleConfig
from spm_bluesky.console.data import CachedSession, SessionCache
from spm_bluesky.report import ImageRecord
from spm_bluesky.storage import (
    ImageLabel,
    LabelClass,
    LabelError,
    SessionNotFound,
    SessionReader,
    label_class,
    read_labels,
    runs_of_plan,
    write_labels,
)

#: The labelling page.
PAGE = Path(__file__).with_name("static") / "label.html"
#: Images in one answer of the list (the page asks for the next part as the person goes).
DEFAULT_LIMIT = 500
MAX_LIMIT = 5000
#: Marks in one request (one stored run).
MAX_BATCH = 500
#: How far ahead of the console's clock a mark's time may be (s): browsers' clocks drift.
CLOCK_SLACK_S = 300.0


class Order(StrEnum):
    """The order the page shows the images in."""

    TIME = "time"
    DISAGREEMENTS = "disagreements"
    UNCERTAIN = "uncertain"


class Show(StrEnum):
    """Which images the page shows."""

    ALL = "all"
    UNLABELLED = "unlabelled"
    DISAGREEMENTS = "disagreements"


class BadLabelRequest(ValueError):
    """A labelling request that is malformed (400); the message says what is wrong."""


class UnknownImage(LookupError):
    """A mark names an image the session does not hold (404)."""


@dataclass(frozen=True)
class AssessorVerdict:
    """What the assessor said of one image: its model, its class and p(good)."""

    model_id: str
    label: str
    p_good: float


@dataclass
class _SessionVerdicts:
    """A session's assessor verdicts by (run uid, seq_num), and the runs read for good (a
    stopped run never changes)."""

    by_image: dict[tuple[str, int], AssessorVerdict] = field(default_factory=dict)
    finished_runs: set[str] = field(default_factory=set)
    stamp: str = ""


@dataclass
class _SessionLabels:
    """A session's current labels and how many ``label_images`` runs they were read from."""

    runs: int
    by_image: dict[tuple[str, int], ImageLabel]


class Labelling:
    """The labelling state of one console: assessor verdicts and labels per session, read
    from Tiled through the app's :class:`~spm_bluesky.console.data.SessionCache` and read
    again only when the session or its labels grew."""

    def __init__(self, sessions: SessionCache) -> None:
        self.sessions = sessions
        self._verdicts: dict[str, _SessionVerdicts] = {}
        self._labels: dict[str, _SessionLabels] = {}
        self._lock = threading.Lock()

    def verdicts(self, cached: CachedSession) -> dict[tuple[str, int], AssessorVerdict]:
        """The assessor's verdict on each image of the session (none for an image it did
        not judge); the runs still open are read again when the session grew."""
        uid = cached.data.session_uid
        with self._lock:
            known = self._verdicts.setdefault(uid, _SessionVerdicts())
            if known.stamp == cached.stamp.token:
                return known.by_image
            for run in SessionReader(self.sessions.client, uid):
                if run.plan_name not in schema.IMAGE_PLANS or run.uid in known.finished_runs:
                    continue
                for judged in run.assessments():
                    known.by_image[(judged.run_uid, judged.seq_num)] = AssessorVerdict(
                        judged.model_id, judged.label, judged.p_good)
                if "stop" in run.container.metadata:
                    known.finished_runs.add(run.uid)
            known.stamp = cached.stamp.token
            return known.by_image

    def labels(self, session_uid: str) -> dict[tuple[str, int], ImageLabel]:
        """The session's current labels (the newest per image), read again when a
        ``label_images`` run was added."""
        client = self.sessions.client
        runs = len(runs_of_plan(client, schema.LABEL_IMAGES, session_uid))
        with self._lock:
            known = self._labels.get(session_uid)
            if known is not None and known.runs == runs:
                return known.by_image
        by_image = {(label.run_uid, label.seq_num): label
                    for label in read_labels(client, session_uid)}
        with self._lock:
            self._labels[session_uid] = _SessionLabels(runs, by_image)
        return by_image

    def listing(self, session_uid: str, order: Order, show: Show, offset: int,
                limit: int) -> dict[str, Any]:
        """The images to label, in ``order``, those ``show`` names, ``limit`` of them from
        ``offset``; with how many the session holds and how many are labelled."""
        cached = self.sessions.session(session_uid)
        verdicts = self.verdicts(cached)
        labels = self.labels(session_uid)
        items = [_item(record, cached, verdicts.get((record.run_uid, record.seq_num)),
                       labels.get((record.run_uid, record.seq_num)))
                 for record in cached.data.images]
        chosen = [item for item in _ordered(items, order) if _shown(item, show)]
        return {schema.SESSION_UID: session_uid, "complete": cached.complete,
                "total": len(items),
                "labelled": sum(item["label"] is not None for item in items),
                "disagreements": sum(item["disagrees"] for item in items),
                "matching": len(chosen), "offset": offset, "order": order, "show": show,
                "items": chosen[offset:offset + limit]}

    def store(self, session_uid: str, who: str, marks: list[Mark]) -> str:
        """Store ``marks`` of ``who`` as one ``label_images`` run; its uid.

        Raises :class:`~spm_bluesky.storage.SessionNotFound` or :class:`UnknownImage` for
        what the session does not hold, :class:`~spm_bluesky.storage.LabelError` for what
        Tiled refuses; nothing is stored then.
        """
        cached = self.sessions.session(session_uid)
        verdicts = self.verdicts(cached)
        for mark in marks:  # a session still being read first: Tiled's check decides
            if cached.complete and (mark.run_uid, mark.seq_num) not in cached.index:
                raise UnknownImage(f"session {session_uid} has no image {mark.seq_num} in "
                                   f"run {mark.run_uid}")
        labels = []
        for mark in marks:
            verdict = verdicts.get((mark.run_uid, mark.seq_num))
            labels.append(ImageLabel(
                session_uid, mark.run_uid, mark.seq_num, mark.label, who, mark.when,
                model_id=verdict.model_id if verdict else None,
                model_label=verdict.label if verdict else None,
                p_good=_finite(verdict.p_good) if verdict else None))
        uid = write_labels(self.sessions.client, labels)
        with self._lock:
            self._labels.pop(session_uid, None)
        return uid


@dataclass(frozen=True)
class Mark:
    """One image's class as the page sends it."""

    run_uid: str
    seq_num: int
    label: LabelClass
    when: float


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else value


def _item(record: ImageRecord, cached: CachedSession, verdict: AssessorVerdict | None,
          label: ImageLabel | None) -> dict[str, Any]:
    """One image as the page lists it: the gallery's view of it, the assessor's verdict,
    the person's label and whether the two differ."""
    shown = image_json(record, cached)
    model_label = verdict.label if verdict else None
    person = str(label.label) if label else None
    return {
        "run_uid": record.run_uid, "seq_num": record.seq_num, "image": shown["large"],
        "hours": shown["hours"], "verdict": record.verdict, "reason": shown["reason"],
        schema.TRUTH: record.truth,
        "model_id": verdict.model_id if verdict else None, "model_label": model_label,
        "p_good": _finite(verdict.p_good) if verdict else _finite(record.p_good),
        "label": person, "who": label.who if label else None,
        "when": label.when if label else None,
        "disagrees": person not in (None, LabelClass.UNCLEAR) and model_label is not None
        and person != model_label,
    }


def _ordered(items: list[dict[str, Any]], order: Order) -> list[dict[str, Any]]:
    if order == Order.DISAGREEMENTS:
        return sorted(items, key=lambda item: 0 if item["disagrees"]
                      else 1 if item["label"] is None else 2)
    if order == Order.UNCERTAIN:
        return sorted(items, key=lambda item: math.inf if item["p_good"] is None
                      else abs(item["p_good"] - 0.5))
    return items


def _shown(item: Mapping[str, Any], show: Show) -> bool:
    if show == Show.UNLABELLED:
        return item["label"] is None
    if show == Show.DISAGREEMENTS:
        return bool(item["disagrees"])
    return True


def _choice(params: Mapping[str, str], name: str, kind: type[StrEnum], default: str) -> Any:
    text = params.get(name, default)
    try:
        return kind(text)
    except ValueError:
        raise BadLabelRequest(f"{name}={text!r} is not one of "
                              f"{', '.join(c.value for c in kind)}") from None


def _count(params: Mapping[str, str], name: str, default: int, most: int) -> int:
    text = params.get(name, str(default))
    if not text.isdigit() or int(text) > most:
        raise BadLabelRequest(f"{name}={text!r} is not a whole number from 0 to {most}")
    return int(text)


def parse_marks(body: Any, now: float) -> tuple[str | None, list[Mark]]:
    """The name and marks of a POST body; :class:`BadLabelRequest` or
    :class:`~spm_bluesky.storage.LabelError` (an unknown class) naming what is wrong."""
    if not isinstance(body, dict):
        raise BadLabelRequest('send a JSON object: {"who": NAME, "labels": [...]}')
    who = body.get("who")
    if who is not None and (not isinstance(who, str) or not NAME_PATTERN.match(who.strip())):
        raise BadLabelRequest("who is 1 to 40 letters, digits, spaces or .@_- characters")
    entries = body.get("labels")
    if not isinstance(entries, list) or not 1 <= len(entries) <= MAX_BATCH:
        raise BadLabelRequest(f"labels is a list of 1 to {MAX_BATCH} marks")
    return (who.strip() if isinstance(who, str) else None,
            [_mark(entry, n, now) for n, entry in enumerate(entries)])


def _mark(entry: Any, n: int, now: float) -> Mark:
    if not isinstance(entry, dict):
        raise BadLabelRequest(f"labels[{n}] is not an object")
    run_uid, seq_num, when = entry.get("run_uid"), entry.get("seq_num"), entry.get("when", now)
    if not isinstance(run_uid, str) or not run_uid:
        raise BadLabelRequest(f"labels[{n}]: run_uid is missing")
    if isinstance(seq_num, bool) or not isinstance(seq_num, int):
        raise BadLabelRequest(f"labels[{n}]: seq_num {seq_num!r} is not an event number")
    if isinstance(when, bool) or not isinstance(when, int | float) or not (
            0 < when <= now + CLOCK_SLACK_S):
        raise BadLabelRequest(f"labels[{n}]: when {when!r} is not a time (unix seconds)")
    return Mark(run_uid, seq_num, label_class(str(entry.get("label"))), float(when))


def _refusal(status: int, err: Exception) -> Response:
    return JSONResponse({"detail": str(err)}, status_code=status)


def routes(config: ConsoleConfig) -> list[BaseRoute]:
    """The page and the endpoints of the module docstring (behind the console's guard)."""
    books: dict[int, Labelling] = {}

    def book(request: Request) -> Labelling:
        sessions = cast(SessionCache, request.app.state.sessions)
        return books.setdefault(id(sessions), Labelling(sessions))

    async def page(request: Request) -> Response:
        return FileResponse(PAGE, headers={"Cache-Control": "no-cache"})

    def listing(request: Request) -> Response:
        params = request.query_params
        try:
            answer = book(request).listing(
                request.path_params["uid"], _choice(params, "order", Order, Order.TIME),
                _choice(params, "show", Show, Show.ALL),
                _count(params, "offset", 0, 10**9), _count(params, "limit", DEFAULT_LIMIT,
                                                           MAX_LIMIT))
        except BadLabelRequest as err:
            return _refusal(400, err)
        except SessionNotFound as err:
            return _refusal(404, err)
        return JSONResponse(answer)

    async def post(request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return _refusal(400, BadLabelRequest("the body is not JSON"))
        return await run_in_threadpool(_store, request, body)

    def _store(request: Request, body: Any) -> Response:
        caller = require_key(request)
        try:
            who, marks = parse_marks(body, time.time())
            who = who or (caller if caller != HEADER_CALLER else None)
            if who is None:
                raise BadLabelRequest("say who labels: the body's 'who'")
            uid = book(request).store(request.path_params["uid"], who, marks)
        except (BadLabelRequest, LabelError) as err:
            return _refusal(400, err)
        except (SessionNotFound, UnknownImage) as err:
            return _refusal(404, err)
        return JSONResponse({"label_run": uid, "stored": len(marks), "who": who},
                            status_code=201)

    return [Route("/sessions/{uid}/label", page),
            Route("/api/sessions/{uid}/labels", listing, methods=["GET"]),
            Route("/api/sessions/{uid}/labels", post, methods=["POST"])]

