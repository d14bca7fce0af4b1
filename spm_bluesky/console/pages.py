"""The console's pages: plain HTML shells filled by one small script (no build step).

Each page is a static HTML file of this package; ``console.js`` reads the JSON endpoints of
:mod:`spm_bluesky.console.api` and fills it in. The pages, the script and the style sheet
are served behind the key like everything else.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

#: The package's HTML, script and style sheet.
STATIC = Path(__file__).with_name("static")
#: Path -> the HTML file that page is.
PAGES = {
    "/": "sessions.html",
    "/sessions/{uid}": "session.html",
    "/sessions/{uid}/gallery": "gallery.html",
    "/sessions/{uid}/episodes": "episodes.html",
}


def _page(path: str, name: str) -> Route:
    """The route serving the page ``name`` at ``path``."""
    async def page(request: Request) -> Response:
        return FileResponse(STATIC / name, headers={"Cache-Control": "no-cache"})

    return Route(path, page, name=name.removesuffix(".html"))


def routes() -> list[BaseRoute]:
    """The pages of :data:`PAGES` and ``/static``."""
    return [*(_page(path, name) for path, name in PAGES.items()),
            Mount("/static", StaticFiles(directory=STATIC), name="static")]
