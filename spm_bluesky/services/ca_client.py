"""caproto's synchronous Channel Access client, safe to call again after a call that failed.

caproto's ``read`` and ``write`` keep each TCP circuit in module-level caches
(``global_circuits`` and ``sockets``) and remove it only once the channel was made. A call
that fails while it makes the channel (an IOC that died or is still starting, a
``Disconnected during initialization``) leaves its circuit behind, and every later call to
the same address reuses the dead socket and fails the same way: polling an IOC until it
answers then never succeeds, and a new IOC that reuses a dead one's port is unreachable
from this process. These wrappers forget the circuits a failed call left, so the next call
connects afresh.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from caproto.sync import client

T = TypeVar("T")


def _forgetting_failed_circuits(call: Callable[[], T]) -> T:
    """``call()``; if it raises, close and forget every circuit made during it (those cached
    before it are left alone), then re-raise."""
    before = dict(client.global_circuits)
    try:
        return call()
    except BaseException:
        for key, circuit in list(client.global_circuits.items()):
            if before.get(key) is not circuit:
                del client.global_circuits[key]
                stale = client.sockets.pop(circuit, None)
                if stale is not None:
                    stale.close()
        raise


def read(pv: str, **kwargs: Any) -> Any:
    """caproto's synchronous ``read`` of ``pv`` (its keyword arguments); a failure leaves no
    circuit behind."""
    return _forgetting_failed_circuits(lambda: client.read(pv, **kwargs))


def write(pv: str, data: Any, **kwargs: Any) -> Any:
    """caproto's synchronous ``write`` of ``data`` to ``pv`` (its keyword arguments); a
    failure leaves no circuit behind."""
    return _forgetting_failed_circuits(lambda: client.write(pv, data, **kwargs))
