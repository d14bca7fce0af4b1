"""Pausing, resuming and stopping the running session from the console.

The console writes a request into the data directory that ``spm-bluesky run`` watches
(:mod:`spm_bluesky.autonomy.control`), so it can control only sessions run from the data
directory it was given (``ConsoleConfig.data_dir``: ``spm-bluesky up`` passes its own).
The run process applies the request at its next checkpoint, records it as a
``session_control`` run in Tiled, and writes the session's new state, which the page polls.

=====================================================  =====================================
``GET /api/sessions/{uid}/control``                    the session's state: ``running``,
                                                       ``paused``, ``stopped`` or
                                                       ``unknown`` (not run from here)
``POST /api/sessions/{uid}/control``                   ``{"command": "pause"|"resume"|
                                                       "stop", "who": NAME}``: 202 once the
                                                       request is written
``GET /sessions/{uid}/control``                        a page with the control alone (the
                                                       widget of ``static/control.js``)
=====================================================  =====================================

A request the session cannot take is refused with a message and nothing written: 400 for a
malformed body or an unknown command, 404 for a session this data directory never ran, 409
for a stopped session or a command that does not fit its state (pause while paused), and 409
too when the console has no data directory.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from spm_bluesky import schema
from spm_bluesky.autonomy.control import (
    Command,
    ControlError,
    ControlRequest,
    NotApplicable,
    SessionStatus,
    UnknownSession,
    read_status,
)
from spm_bluesky.autonomy.control import request as ask_session
from spm_bluesky.console.auth import HEADER_CALLER, NAME_PATTERN, require_key
from spm_bluesky.console.config import ConsoleConfig

#: The page holding the control alone.
PAGE = Path(__file__).with_name("static") / "control.html"
#: The state of a session this data directory never ran.
UNKNOWN = "unknown"
NO_DATA_DIR = ("this console was started without the data directory of `spm-bluesky up` "
               "(--data-dir): it can show sessions but not control them")


def _refusal(status: int, detail: str) -> Response:
    return JSONResponse({"detail": detail}, status_code=status)


def session_state(data_dir: Path | None, session_uid: str) -> dict[str, Any]:
    """The session's state as the page shows it, and whether it can be controlled."""
    if data_dir is None:
        return {"state": UNKNOWN, "since": None, "controllable": False,
                "detail": NO_DATA_DIR}
    state = read_status(data_dir, session_uid)
    if state is None:
        return {"state": UNKNOWN, "since": None, "controllable": False,
                "detail": f"session {session_uid} was not run from {data_dir}"}
    return {"state": str(state.status), "since": state.since,
            "controllable": state.status != SessionStatus.STOPPED,
            "detail": ""}


def parse_command(body: Any) -> tuple[Command, str | None]:
    """The command and name of a POST body; ControlError saying what is wrong."""
    if not isinstance(body, dict):
        raise ControlError('send a JSON object: {"command": "pause", "who": NAME}')
    text = body.get("command")
    try:
        command = Command(str(text))
    except ValueError:
        raise ControlError(f"unknown command {text!r}: use one of "
                           f"{', '.join(c.value for c in Command)}") from None
    who = body.get("who")
    if who is not None and (not isinstance(who, str) or not NAME_PATTERN.match(who.strip())):
        raise ControlError("who is 1 to 40 letters, digits, spaces or .@_- characters")
    return command, who.strip() if isinstance(who, str) else None


def routes(config: ConsoleConfig) -> list[BaseRoute]:
    """The endpoints and page of the module docstring (behind the console's guard)."""
    data_dir = config.data_dir

    def state(request: Request) -> Response:
        uid = request.path_params["uid"]
        try:
            return JSONResponse({schema.SESSION_UID: uid, **session_state(data_dir, uid)})
        except UnknownSession as err:
            return _refusal(404, str(err))

    async def post(request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return _refusal(400, "the body is not JSON")
        return await run_in_threadpool(_apply, request, body)

    def _apply(request: Request, body: Any) -> Response:
        caller = require_key(request)
        uid = request.path_params["uid"]
        try:
            command, who = parse_command(body)
        except ControlError as err:
            return _refusal(400, str(err))
        who = who or (caller if caller != HEADER_CALLER else None)
        if who is None:
            return _refusal(400, "say who asks: the body's 'who'")
        if data_dir is None:
            return _refusal(409, NO_DATA_DIR)
        try:
            seq = ask_session(data_dir, ControlRequest(uid, command, who, time.time()))
        except UnknownSession as err:
            return _refusal(404, str(err))
        except NotApplicable as err:
            return _refusal(409, str(err))
        except ControlError as err:
            return _refusal(400, str(err))
        return JSONResponse({schema.SESSION_UID: uid, "command": str(command), "who": who,
                             "seq": seq, **session_state(data_dir, uid)}, status_code=202)

    async def page(request: Request) -> Response:
        return FileResponse(PAGE, headers={"Cache-Control": "no-cache"})

    return [Route("/api/sessions/{uid}/control", state, methods=["GET"]),
            Route("/api/sessions/{uid}/control", post, methods=["POST"]),
            Route("/sessions/{uid}/control", page)]
