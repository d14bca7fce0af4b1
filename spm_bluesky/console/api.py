"""The console's JSON and PNG endpoints: sessions, one session's state, the gallery's pages,
the conditioning episodes, the figures and the images.

=====================================================  =====================================
``GET /api/sessions``                                  the newest sessions, live and stored
``GET /api/sessions/{uid}``                            the session now: counts, yield, the
                                                       newest image, a stamp that changes
                                                       when the session grows
``GET /api/sessions/{uid}/images?FILTERS``             one gallery page (see ``filters``)
``GET /api/sessions/{uid}/episodes``                   each conditioning episode, before/after
``GET /api/sessions/{uid}/figures/{part}.png``         ``timeline`` or ``map``
``GET /api/sessions/{uid}/images/{run}/{seq}.png``     one image, ``?size=tile|large``
=====================================================  =====================================

Handlers are plain functions: Starlette runs them in its thread pool, so reading Tiled and
drawing never block the event loop. Errors answer JSON ``{"detail": ...}``: 400 for a bad
parameter, 404 for an unknown session or image.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from typing import Any, cast

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from spm_bluesky import schema
from spm_bluesky.console.data import CachedSession, SessionCache
from spm_bluesky.console.filters import FilterError, GalleryFilter
from spm_bluesky.console.render import ImageSize, image_png, part_png
from spm_bluesky.report import ImageRecord, verdict_reason
from spm_bluesky.report.figures import FigurePart
from spm_bluesky.storage import SessionNotFound

#: The figures served (the report's parts that show a whole session).
FIGURES: tuple[FigurePart, ...] = ("timeline", "map")
#: A PNG named by what it shows never changes: browsers may keep it.
IMMUTABLE = {"Cache-Control": "private, max-age=86400, immutable"}


def _cache(request: Request) -> SessionCache:
    return cast(SessionCache, request.app.state.sessions)


def _number(value: float | None) -> float | None:
    """JSON has no NaN: None instead."""
    return None if value is None or math.isnan(value) else value


def image_json(record: ImageRecord, session: CachedSession) -> dict[str, Any]:
    """One image as the pages show it: where, when, the assessment, the verdict and why."""
    data = session.data
    uid = data.session_uid
    # The verdict is part of the picture's title and arrives after the frame: a new verdict
    # is a new URL, so a browser never keeps a picture with the old one.
    png = f"/api/sessions/{uid}/images/{record.run_uid}/{record.seq_num}.png?v={record.verdict}"
    return {
        "run_uid": record.run_uid, "seq_num": record.seq_num, "clock": record.clock,
        "hours": data.hours(record.clock), "area": record.area,
        "x_nm": record.x * 1e9, "y_nm": record.y * 1e9, "size_nm": record.size * 1e9,
        "p_good": _number(record.p_good), "tip_belief": _number(record.tip_belief),
        "assessed": session.assessed_class(record), schema.TRUTH: record.truth,
        "verdict": record.verdict,
        "reason": verdict_reason(record), "unsure_score": _number(record.unsure_score),
        "source": record.source,
        "tile": f"{png}&size=tile", "large": f"{png}&size=large",
    }


def _session(request: Request, refresh: bool = True) -> CachedSession:
    """The session the path names (``refresh``: with what it gained since last checked);
    404 (raised as SessionNotFound) if there is none."""
    return _cache(request).session(request.path_params["uid"], refresh)


def sessions(request: Request) -> Response:
    """The newest sessions, newest first."""
    return JSONResponse([{
        "uid": listed.summary.uid, "runs": listed.summary.runs,
        "first_plan": listed.summary.first_plan, "live": listed.live,
        "imported": listed.imported, "first_time": listed.first_time,
        "last_time": listed.last_time} for listed in _cache(request).sessions()])


def session(request: Request) -> Response:
    """The session now (what the live view polls)."""
    cached = _session(request)
    data = cached.data
    latest = cached.latest()
    if latest is not None and cached.live:  # the page asks for it next: draw it meanwhile
        cache = _cache(request)
        cache.warm(*_image_job(cache, latest, ImageSize.LARGE))
    figures = cached.figures
    return JSONResponse({
        "uid": data.session_uid, "stamp": cached.stamp.token, "live": cached.live,
        "imported": cached.imported, "runs": data.runs, "first_time": data.first_time,
        "last_time": data.last_time, schema.MODEL_IDS: data.model_ids,
        schema.TWIN_SEED: data.twin_seed, "keep_threshold": data.keep_threshold,
        "hours": figures.simulated_hours,
        "progress": {"images": figures.images, "kept": figures.good_images,
                     "actions": figures.actions, "crashes": figures.crashes,
                     "episodes": figures.conditioning_episodes,
                     "simulated_hours": figures.simulated_hours},
        "yield": figures.rows(),
        "verdicts": dict(Counter(r.verdict for r in data.images)),
        "latest": None if latest is None else image_json(latest, cached),
        "complete": cached.complete, "runs_read": cached.runs_read,
        "runs_total": cached.runs_total,
    })


def images(request: Request) -> Response:
    """One page of the gallery: the images passing the filters, and how many do."""
    chosen = GalleryFilter.parse(request.query_params)
    cached = _session(request)
    page, total = chosen.select(cached)
    return JSONResponse({
        "stamp": cached.stamp.token, "total": total, "page": chosen.page,
        "per_page": chosen.per_page, "pages": max(1, math.ceil(total / chosen.per_page)),
        "complete": cached.complete, "runs_read": cached.runs_read,
        "runs_total": cached.runs_total,
        "images": [image_json(record, cached) for record in page]})


def episodes(request: Request) -> Response:
    """Each conditioning episode: its span, outcome, actions, first and last image."""
    cached = _session(request)
    data = cached.data
    found = []
    for number, episode in enumerate(data.episodes, 1):
        actions = [a.name for a in data.actions if episode.start <= a.clock <= episode.end]
        found.append({
            "number": number, "start_hours": data.hours(episode.start),
            "end_hours": data.hours(episode.end), "success": episode.success,
            "actions": actions,
            "before": None if episode.before is None else image_json(episode.before, cached),
            "after": None if episode.after is None else image_json(episode.after, cached)})
    return JSONResponse(found)


def figure(request: Request) -> Response:
    """The session's ``timeline`` or ``map`` as a PNG, drawn once per stamp."""
    part = request.path_params["part"]
    if part not in FIGURES:
        return JSONResponse({"detail": f"no figure {part!r}: one of {', '.join(FIGURES)}"},
                            status_code=404)
    cache = _cache(request)
    cached = _session(request, refresh=False)  # the page asks for the stamp it was told

    def draw() -> bytes:
        return part_png(cast(FigurePart, part), cached.data)

    png = cache.pngs.get(("figure", cached.data.session_uid, part, cached.stamp), draw)
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-cache"})


def image(request: Request) -> Response:
    """One stored image with its colour and scale bars, verdict and p(good)."""
    size_text = request.query_params.get("size", ImageSize.TILE)
    if size_text not in tuple(ImageSize):
        raise FilterError(f"size {size_text!r} is not one of {', '.join(ImageSize)}")
    size = ImageSize(size_text)
    cache = _cache(request)
    key = (request.path_params["run"], int(request.path_params["seq"]))
    cached = _session(request, refresh=False)
    if key not in cached.index:  # stored after the session was last read
        cached = _session(request)
    record = cached.index.get(key)
    if record is None:
        return JSONResponse({"detail": f"session {cached.data.session_uid} has no image "
                                       f"{key[1]} in run {key[0]}"}, status_code=404)

    png = cache.pngs.get(*_image_job(cache, record, size))
    return Response(png, media_type="image/png", headers=IMMUTABLE)


def _image_job(cache: SessionCache, record: ImageRecord, size: ImageSize
               ) -> tuple[tuple[Any, ...], Callable[[], bytes]]:
    """The PNG cache's key of an image at ``size``, and how to draw it."""
    def draw() -> bytes:
        ((_, frame),) = cache.frames([record])
        return image_png(record, frame, size)

    return ("image", record.run_uid, record.seq_num, size, record.verdict, record.p_good), draw


def _not_found(request: Request, exc: Exception) -> Response:
    return JSONResponse({"detail": str(exc)}, status_code=404)


def _bad_request(request: Request, exc: Exception) -> Response:
    return JSONResponse({"detail": str(exc)}, status_code=400)


#: What the app answers for this module's errors (``exception_handlers``).
EXCEPTION_HANDLERS = {SessionNotFound: _not_found, FilterError: _bad_request}


def routes() -> list[Route]:
    """The endpoints of the module docstring."""
    return [
        Route("/api/sessions", sessions),
        Route("/api/sessions/{uid}", session),
        Route("/api/sessions/{uid}/images", images),
        Route("/api/sessions/{uid}/episodes", episodes),
        Route("/api/sessions/{uid}/figures/{part}.png", figure),
        Route("/api/sessions/{uid}/images/{run}/{seq:int}.png", image),
    ]
