"""The IOC refuses a Channel Access message larger than the largest legal request without
buffering it: a raw client claiming a 1 GiB payload is dropped, the IOC's memory does not
grow, and it goes on serving."""

from __future__ import annotations

import socket
import struct
import time

import psutil
import pytest

from tests.ca_sync import read

pytestmark = pytest.mark.integration

#: 64 MiB of payload sent behind the header (the header claims 1 GiB).
SENT_BYTES = 64 * 1024 * 1024


def _extended_write_header(payload_size: int) -> bytes:
    """A CA_PROTO_WRITE (command 4) extended header claiming ``payload_size`` bytes."""
    return struct.pack(">HHHHII", 4, 0xFFFF, 6, 0, 1, 1) + struct.pack(
        ">II", payload_size, 1)


def test_oversized_ca_message_is_refused_without_buffering(start_ioc):
    ioc = start_ioc(seed=5)
    rss = psutil.Process(ioc.pid).memory_info().rss
    with socket.create_connection(("127.0.0.1", ioc.port), timeout=10) as sock:
        sock.sendall(struct.pack(">HHHHII", 0, 0, 1, 13, 0, 0))  # version
        sock.sendall(_extended_write_header(1 << 30))
        chunk = b"\0" * (1 << 20)
        sent = 0
        try:
            while sent < SENT_BYTES:
                sock.sendall(chunk)
                sent += len(chunk)
        except OSError:  # the IOC hung up on us: what it should do
            pass
    time.sleep(0.5)
    grown = psutil.Process(ioc.pid).memory_info().rss - rss
    assert sent < SENT_BYTES, "the IOC kept reading a 1 GiB message"
    assert grown < 8 * 1024 * 1024, f"the IOC grew by {grown / 2**20:.1f} MiB"
    assert "largest legal request" in ioc.log()
    # It still serves.
    assert read(ioc.pv("Status:Clock"), timeout=5).data is not None
