"""The web console: watch a session live, browse its images, label them, control it.

A local web app (Starlette, which comes with Tiled; plain HTML and one small script, no
front-end build step) that reads only from Tiled, behind the same API key.

==============  ===========================================================================
``config``      :class:`ConsoleConfig`: the Tiled server, the key, the address
``auth``        the key guard in front of every route, the sign-in form and its cookie
``app``         :func:`create_app`: every route, behind the guard
``data``        the sessions read from Tiled, cached until they grow; frames per page
``filters``     the gallery's filters and pages
``render``      images and figures as PNGs, drawn by the report's figure code
``api``         the JSON and PNG endpoints
``pages``       the HTML pages and static files
``server``      serving it with uvicorn on 127.0.0.1
``labelling``   labelling images (marks stored in Tiled)
``control``     pausing, resuming and stopping the running session
==============  ===========================================================================

    from spm_bluesky.console import ConsoleConfig, serve
    serve(ConsoleConfig("http://127.0.0.1:8000", api_key, data_dir=None))
"""

from spm_bluesky.console.app import create_app
from spm_bluesky.console.config import LOOPBACK, ConsoleConfig
from spm_bluesky.console.server import READY, serve

__all__ = ["LOOPBACK", "READY", "ConsoleConfig", "create_app", "serve"]
