"""The console's web application: pages, JSON, figures, behind the key.

:func:`create_app` puts :class:`~spm_bluesky.console.auth.KeyGuard` in front of every route:
the sign-in form (:mod:`~spm_bluesky.console.auth`), the pages and static files
(:mod:`~spm_bluesky.console.pages`), the JSON and PNG endpoints
(:mod:`~spm_bluesky.console.api`), and the routes of labelling and session control
(:mod:`spm_bluesky.console.labelling`, :mod:`spm_bluesky.console.control`). The sessions are
read from Tiled through one :class:`~spm_bluesky.console.data.SessionCache` per app.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute

from spm_bluesky.console import api, auth, control, labelling, pages
from spm_bluesky.console.config import ConsoleConfig
from spm_bluesky.console.data import SessionCache
from spm_bluesky.storage import connect


def create_app(config: ConsoleConfig) -> Starlette:
    """The console for ``config``: every route needs the key; sessions come from Tiled.

    The Tiled client connects on the first request, so an app can be built (and its routes
    listed) before Tiled answers.
    """
    routes: list[BaseRoute] = [
        *auth.routes(),
        *api.routes(),
        *labelling.routes(config),
        *control.routes(config),
        *pages.routes(),  # last: it mounts the static files
    ]
    app = Starlette(routes=routes,
                    middleware=[Middleware(auth.KeyGuard, api_key=config.api_key)],
                    exception_handlers=api.EXCEPTION_HANDLERS)
    app.state.api_key = config.api_key
    app.state.config = config
    app.state.sessions = SessionCache(lambda: connect(config.tiled_uri, config.api_key))
    return app
