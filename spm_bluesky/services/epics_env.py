"""Loopback-only Channel Access settings on ports of our own.

EPICS CA reads its environment once per process, so these must be in place before the
IOC subprocess and the first client start (see docs/reference/pitfalls.md).
"""

from __future__ import annotations

import os
import socket

#: Large enough for a 1024 x 1024 float32 image plus headers.
MAX_ARRAY_BYTES = 16 * 1024 * 1024


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (also probed for UDP)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


def loopback_ca_env(server_port: int, repeater_port: int) -> dict[str, str]:
    """The ``EPICS_CA_*`` variables for a loopback-only CA setup on the given ports."""
    return {
        "EPICS_CA_SERVER_PORT": str(server_port),
        "EPICS_CA_REPEATER_PORT": str(repeater_port),
        "EPICS_CAS_SERVER_PORT": str(server_port),
        "EPICS_CA_ADDR_LIST": "127.0.0.1",
        "EPICS_CA_AUTO_ADDR_LIST": "NO",
        "EPICS_CAS_INTF_ADDR_LIST": "127.0.0.1",
        "EPICS_CA_MAX_ARRAY_BYTES": str(MAX_ARRAY_BYTES),
    }


def use_private_loopback_ca() -> dict[str, str]:
    """Put a loopback CA setup on two fresh ports into ``os.environ`` and return it."""
    env = loopback_ca_env(free_port(), free_port())
    os.environ.update(env)
    return env
