"""The console's guard: nothing is served without the API key.

A request carries the key in an ``Authorization: Apikey KEY`` header (scripts, tests), or
the cookie that the ``/login`` form sets once the key is typed in (browsers). The cookie
never holds the key: it holds the person's name and an HMAC-SHA256 of that name keyed with
the API key, so it is worthless once the key changes and cannot be turned back into the
key. It is ``HttpOnly`` (page scripts cannot read it) and ``SameSite=Strict`` (another site
cannot make the browser send it); a state-changing request must also come from the
console's own origin. Keys and tokens are compared with :func:`hmac.compare_digest`.

:class:`KeyGuard` is an ASGI middleware in front of every route (pages, JSON, images,
static files, the routes other modules mount); :func:`require_key` is the same check for
a route handler that wants the caller's name (``who`` labelled an image, paused a session).
"""

from __future__ import annotations

import hashlib
import hmac
import html
import re
from collections.abc import Mapping
from urllib.parse import quote, unquote, urlencode

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

#: ``Authorization: Apikey KEY``, as Tiled spells it.
SCHEME = "Apikey"
#: The browser's proof of the key (see the module docstring).
COOKIE = "spm_console"
LOGIN_PATH = "/login"
LOGOUT_PATH = "/logout"
#: The caller's name when the key came in the header.
HEADER_CALLER = "apikey"
#: A name typed into the login form: letters, digits, space and ``.@_-``, 1 to 40 of them.
NAME_PATTERN = re.compile(r"^[\w .@-]{1,40}$")
#: Methods that change nothing (the others must come from the console's own origin).
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: What a refused request is told.
NO_KEY = ("this console needs the API key: send 'Authorization: Apikey KEY' or sign in at "
          f"{LOGIN_PATH} (the key is Tiled's, in the services.json of `spm-bluesky up`)")


def session_token(api_key: str, who: str) -> str:
    """The cookie value for ``who``: the name and an HMAC of it keyed with ``api_key``."""
    mac = hmac.new(api_key.encode(), f"spm-console:{who}".encode(), hashlib.sha256)
    return f"{quote(who, safe='')}.{mac.hexdigest()}"


def _cookie_caller(value: str, api_key: str) -> str | None:
    """The name a cookie value vouches for, or None if it was not made with ``api_key``."""
    name, _, _mac = value.rpartition(".")
    who = unquote(name)
    if not name or not NAME_PATTERN.match(who):
        return None
    return who if hmac.compare_digest(value, session_token(api_key, who)) else None


def caller(headers: Headers, cookies: Mapping[str, str], api_key: str) -> str | None:
    """Who makes the request: the cookie's name, :data:`HEADER_CALLER` for the header's
    key; None when neither carries the key."""
    scheme, _, given = headers.get("authorization", "").partition(" ")
    if scheme.lower() == SCHEME.lower() and hmac.compare_digest(
            given.strip().encode(), api_key.encode()):
        return HEADER_CALLER
    value = cookies.get(COOKIE)
    return _cookie_caller(value, api_key) if value else None


def _same_origin(headers: Headers) -> bool:
    """True unless the browser says the request comes from another origin."""
    origin = headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    return origin.split("://", 1)[-1] == headers.get("host", "")


def require_key(request: Request) -> str:
    """The caller's name; HTTPException 401 if the request does not carry the key (the
    console's :class:`KeyGuard` has normally refused it already)."""
    who = request.scope.get("state", {}).get("who")
    if who is None:
        who = caller(request.headers, request.cookies, _api_key(request.scope))
    if who is None:
        raise HTTPException(401, NO_KEY)
    return str(who)


def _api_key(scope: Scope) -> str:
    app = scope.get("app")
    key = getattr(getattr(app, "state", None), "api_key", None)
    if not key:
        raise RuntimeError("the console app holds no API key (app.state.api_key)")
    return str(key)


class KeyGuard:
    """ASGI middleware: every request but the login form's needs the key (see the module
    docstring); the caller's name goes to ``request.state.who``."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.api_key = api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == LOGIN_PATH:
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        who = caller(request.headers, request.cookies, self.api_key)
        if who is None:
            await refusal(request)(scope, receive, send)
            return
        if request.method not in SAFE_METHODS and not _same_origin(request.headers):
            await JSONResponse({"detail": "refused: this request comes from another site"},
                               status_code=403)(scope, receive, send)
            return
        scope.setdefault("state", {})["who"] = who
        await self.app(scope, receive, send)


def _wants_page(request: Request) -> bool:
    return request.method == "GET" and "text/html" in request.headers.get("accept", "")


def refusal(request: Request) -> Response:
    """401: the login form for a browser asking for a page, else JSON saying what is
    needed."""
    if _wants_page(request):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return HTMLResponse(login_page(target, ""), status_code=401)
    return JSONResponse({"detail": NO_KEY}, status_code=401,
                        headers={"WWW-Authenticate": SCHEME})


def _safe_target(target: str) -> str:
    """Where to go after signing in: a path of this console, never another site."""
    return target if target.startswith("/") and not target.startswith("//") else "/"


def login_page(target: str, message: str) -> str:
    """The sign-in form (self-contained: nothing else is served before signing in)."""
    note = f'<p class="error">{html.escape(message)}</p>' if message else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>spm-bluesky console: sign in</title>
<style>body{{font:16px system-ui,sans-serif;margin:4em auto;max-width:30em;color:#222}}
label{{display:block;margin:.8em 0 .2em}}input{{font-size:1em;padding:.3em;width:100%}}
button{{margin-top:1em;font-size:1em;padding:.4em 1.2em}}.error{{color:#b00}}</style></head>
<body><h1>spm-bluesky console</h1>
<p>This console needs the API key of the session's Tiled server (in
<code>services.json</code> of the data directory of <code>spm-bluesky up</code>).</p>{note}
<form method="post" action="{LOGIN_PATH}">
<input type="hidden" name="next" value="{html.escape(_safe_target(target))}">
<label for="key">API key</label><input id="key" name="key" type="password" autofocus
 autocomplete="current-password">
<label for="name">Your name (recorded with your labels and actions)</label>
<input id="name" name="name" value="console" maxlength="40">
<button type="submit">Sign in</button></form></body></html>"""


async def _login(request: Request) -> Response:
    """GET: the form. POST: check the key; set the cookie and go on, or say what is wrong."""
    if request.method in SAFE_METHODS:
        return HTMLResponse(login_page(request.query_params.get("next", "/"), ""))
    form = await request.form()
    key, who = str(form.get("key", "")), str(form.get("name", "")).strip() or "console"
    target = _safe_target(str(form.get("next", "/")))
    api_key: str = request.app.state.api_key
    if not hmac.compare_digest(key.encode(), api_key.encode()):
        return HTMLResponse(login_page(target, "That is not the key."), status_code=401)
    if not NAME_PATTERN.match(who):
        return HTMLResponse(login_page(target, "A name is 1 to 40 letters, digits, spaces "
                                               "or .@_- characters."), status_code=400)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(COOKIE, session_token(api_key, who), httponly=True,
                        samesite="strict", path="/")
    return response


async def _logout(request: Request) -> Response:
    response = RedirectResponse(f"{LOGIN_PATH}?{urlencode({'next': '/'})}", status_code=303)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return response


def routes() -> list[Route]:
    """``/login`` (the form and its check) and ``/logout``."""
    return [Route(LOGIN_PATH, _login, methods=["GET", "POST"]),
            Route(LOGOUT_PATH, _logout, methods=["GET", "POST"])]
