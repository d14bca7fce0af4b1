"""caproto's synchronous Channel Access client for tests, searching again when a search is lost.

caproto's ``read`` and ``write`` find a PV by UDP search and send that search only twice in
their timeout. With three test workers on two cores a search or its answer can go missing
(one CI run waited 20 s for ``Sim:TimeScale`` after reading 16 PVs of the same IOC), and a
test then fails for want of a datagram. Here each call is tried again, on a fresh socket,
when its search went unanswered; nothing has been read or written by then, so a write is
never applied twice. Any other failure is raised at once. Every call goes through
:mod:`spm_bluesky.services.ca_client`, so a failed one leaves no dead circuit for the next
(an IOC restarted on a dead one's port stays reachable).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from caproto import CaprotoTimeoutError

from spm_bluesky.services import ca_client

#: Searches that may go unanswered before the test fails.
SEARCH_TRIES = 4
#: caproto's words for an unanswered search (the other timeouts come after the search).
_LOST_SEARCH = "Timed out while awaiting a response from the search for"

T = TypeVar("T")


def _searching(call: Callable[[], T]) -> T:
    """``call()``, again while its search is what timed out, up to SEARCH_TRIES times."""
    for _ in range(SEARCH_TRIES - 1):
        try:
            return call()
        except CaprotoTimeoutError as exc:
            if _LOST_SEARCH not in str(exc):
                raise
    return call()


def read(pv: str, *, timeout: float = 10.0, **kwargs: Any) -> Any:
    """caproto's ``read`` of ``pv``, searching again up to SEARCH_TRIES times."""
    return _searching(lambda: ca_client.read(pv, timeout=timeout, **kwargs))


def write(pv: str, data: Any, *, timeout: float = 10.0, **kwargs: Any) -> Any:
    """caproto's ``write`` to ``pv``, searching again up to SEARCH_TRIES times."""
    return _searching(lambda: ca_client.write(pv, data, timeout=timeout, **kwargs))
