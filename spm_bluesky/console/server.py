"""Running the console: uvicorn on a socket bound before it starts, so port 0 works and the
URL printed is the one served."""

from __future__ import annotations

import socket
from collections.abc import Callable

import uvicorn

from spm_bluesky.console.app import create_app
from spm_bluesky.console.config import ConsoleConfig

#: The line a launcher waits for (``spm-bluesky up``); the URL follows it.
READY = "spm-console ready"


def bind(config: ConsoleConfig) -> socket.socket:
    """A listening TCP socket on ``config.host`` and ``config.port`` (0: a free port);
    OSError if the address cannot be used."""
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((config.host, config.port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def url_of(sock: socket.socket) -> str:
    """The console's URL on the bound socket."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def serve(config: ConsoleConfig, on_ready: Callable[[str], None] = print) -> None:
    """Serve the console until interrupted (SIGINT or SIGTERM); ``on_ready(url)`` once it
    listens. Access logs are off: a URL may carry what a person filtered, never the key,
    but the console has nothing to log per request."""
    sock = bind(config)
    server = uvicorn.Server(uvicorn.Config(create_app(config), log_level="warning",
                                           access_log=False, lifespan="off"))
    on_ready(url_of(sock))
    server.run(sockets=[sock])
