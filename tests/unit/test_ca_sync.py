"""The tests' Channel Access helper searches again when a search is lost, and only then."""

from __future__ import annotations

import pytest
from caproto import CaprotoTimeoutError
from caproto.sync import client

from spm_bluesky.services import ca_client
from tests import ca_sync


def flaky(failures: list[Exception]):
    """A call that raises each of ``failures`` in turn, then returns how often it ran."""
    calls = []

    def call() -> int:
        calls.append(1)
        if len(calls) <= len(failures):
            raise failures[len(calls) - 1]
        return len(calls)

    return call


def lost_search() -> CaprotoTimeoutError:
    return CaprotoTimeoutError("Timed out while awaiting a response from the search for "
                               "'X:Sim:TimeScale'. Search requests were sent to ...")


def test_a_lost_search_is_sent_again():
    assert ca_sync._searching(flaky([lost_search(), lost_search()])) == 3


def test_searches_lost_every_time_fail_after_the_last_try():
    call = flaky([lost_search()] * ca_sync.SEARCH_TRIES)
    with pytest.raises(CaprotoTimeoutError, match="from the search for"):
        ca_sync._searching(call)


def test_a_timeout_after_the_search_is_not_tried_again():
    """A write may have reached the IOC by then: trying again could apply it twice."""
    call = flaky([CaprotoTimeoutError("Server at 127.0.0.1:5064 did not respond")])
    with pytest.raises(CaprotoTimeoutError, match="did not respond"):
        ca_sync._searching(call)


class DeadSocket:
    """Stands for a circuit's TCP socket; records being closed."""

    closed = False

    def close(self) -> None:
        self.closed = True


def test_a_failed_call_leaves_no_circuit_behind(monkeypatch) -> None:
    """caproto caches a circuit per address and drops it only after a channel was made: a
    call that fails while connecting would leave a dead one for every later call to that
    address. The wrapper forgets what the failed call made, and nothing else."""
    kept, kept_socket = object(), DeadSocket()
    monkeypatch.setattr(client, "global_circuits", {(("127.0.0.1", 1), 0): kept})
    monkeypatch.setattr(client, "sockets", {kept: kept_socket})
    left = DeadSocket()

    def failing_read(pv: str, **kwargs: object) -> None:
        circuit = object()
        client.global_circuits[(("127.0.0.1", 5064), 0)] = circuit
        client.sockets[circuit] = left
        raise RuntimeError("Disconnected during initialization")

    monkeypatch.setattr(client, "read", failing_read)
    with pytest.raises(RuntimeError, match="Disconnected"):
        ca_client.read("X:Status:Clock")
    assert left.closed and not kept_socket.closed
    assert client.global_circuits == {(("127.0.0.1", 1), 0): kept}
    assert client.sockets == {kept: kept_socket}
    monkeypatch.setattr(client, "read", lambda pv, **kwargs: 42.0)
    assert ca_client.read("X:Status:Clock") == 42.0
