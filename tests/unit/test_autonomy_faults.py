"""The IOC-outage guard in mock mode, with a real RunEngine and bluesky's own suspender.

The outage is staged at the worst moment for a rewind: a frame was triggered and the link
fails before its ``wait`` started, so the RunEngine keeps the failed frame's status in the
group that the replayed ``wait`` waits on (bluesky 1.15 does not clear groups on rewind).
"""

from __future__ import annotations

import asyncio
import sys
import threading

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import numpy as np
import pytest
from bluesky.suspenders import SuspendBoolLow
from ophyd_async.core import callback_on_mock_put, init_devices
from ophyd_async.plan_stubs import ensure_connected

from spm_bluesky.autonomy.faults import GuardedReadable, GuardedScan, LinkMonitor, ValueWatch
from tests.unit.test_plans_mock import FakeController, events, make_stm

IMAGE_KEY = "stm-scan-image"


class FlakyController(FakeController):
    """The first ``Scan:Acquire`` put finds the IOC gone: the link drops and the put fails."""

    def __init__(self, stm, link: LinkMonitor) -> None:
        super().__init__(stm)
        self.link = link
        self.failed = False
        callback_on_mock_put(stm.scan.acquire, self._flaky_acquire)

    async def _flaky_acquire(self, value: int) -> None:
        if not self.failed:
            self.failed = True
            self.link.set_state(False)
            raise ConnectionError("Virtual circuit disconnect")
        await self._acquire(value)


def outage_plan(frame: GuardedScan, link: LinkMonitor, restore: threading.Event):
    """One image with the outage between its trigger and its wait; the IOC comes back
    once the suspension is under way."""
    yield from ensure_connected(link)

    def body():
        yield from bps.open_run()
        yield from bps.checkpoint()
        yield from bps.trigger(frame, group="frame")
        yield from bps.sleep(0.5)  # the suspension lands here, before the wait
        yield from bps.wait("frame")
        yield from bps.create()
        yield from bps.read(frame)
        yield from bps.save()
        yield from bps.close_run()

    def suspended():
        restore.set()
        yield from bps.null()

    suspender = SuspendBoolLow(ValueWatch(link.connected), sleep=0.2, pre_plan=suspended)
    yield from bpp.suspend_wrapper(body(), [suspender])


@pytest.mark.timeout(60)
def test_a_frame_failed_by_an_outage_before_its_wait_does_not_hang_the_replay(RE, docs):
    stm, _ = make_stm(RE)
    with init_devices(mock=True):
        link = LinkMonitor("MOCK:Status:Clock")
    frame = GuardedScan(stm.scan, link, size=10e-9, pixels=64)
    controller = FlakyController(stm, link)
    restore = threading.Event()

    def come_back() -> None:
        restore.wait(30)
        RE.loop.call_soon_threadsafe(link.set_state, True)

    threading.Thread(target=come_back, daemon=True).start()
    RE(outage_plan(frame, link, restore))

    assert controller.failed and controller.frames == 1
    (event,) = events(docs)
    np.testing.assert_array_equal(event["data"][IMAGE_KEY], np.full((64, 64), 1.0))
    assert link.generation == 1  # the frame settings are written again after the outage


@pytest.mark.timeout(60)
def test_a_frame_error_without_an_outage_fails_the_plan(RE):
    stm, controller = make_stm(RE)
    with init_devices(mock=True):
        link = LinkMonitor("MOCK:Status:Clock")

    def broken(value: int) -> None:
        raise RuntimeError("the controller refused the scan")

    callback_on_mock_put(stm.scan.acquire, broken)
    frame = GuardedScan(stm.scan, link, size=10e-9, pixels=64)
    with pytest.raises(Exception, match="refused the scan"):
        RE(bps.trigger(frame, wait=True))
    assert controller.frames == 0


class DeadDevice:
    """A device whose every read fails, as a CA read does when the IOC dies."""

    name = "dead"

    async def read(self):
        raise ConnectionError("Virtual circuit disconnect")


def test_a_failed_read_is_cancelled_by_the_suspension_that_the_same_outage_causes():
    """The link drop wakes the guard and cancels the reader in one event-loop turn (as the
    suspender does to the RunEngine's task): the cancellation must not be swallowed."""

    async def scenario() -> bool:
        link = LinkMonitor("MOCK:Status:Clock")
        await link.connect(mock=True)
        reader = asyncio.ensure_future(GuardedReadable(DeadDevice(), link).read())
        await asyncio.sleep(0.05)  # the read failed; the guard waits to see the link go
        link.set_state(False)
        reader.cancel()
        await asyncio.wait([reader], timeout=2.0)
        return reader.cancelled()

    assert asyncio.run(scenario())


class AnsweringDevice:
    """A device whose read, like ophyd-async's, is an ``asyncio.wait_for`` on the reply."""

    name = "answering"

    def __init__(self) -> None:
        self.reply: asyncio.Future[dict] = asyncio.get_running_loop().create_future()

    async def read(self):
        return await asyncio.wait_for(self.reply, timeout=5.0)


@pytest.mark.parametrize("guarded", [True, False])
def test_a_read_that_answers_as_the_suspension_cancels_it_is_cancelled(guarded):
    """The reply arrives in the same loop turn as the suspender cancels the RunEngine's task.
    Python 3.11's wait_for then returns the reply and drops the cancel; the guard raises it,
    so no late reading reaches the rewound plan. Unguarded, the reading gets through on 3.11
    (which shows that the staging really hits the race; 3.12's wait_for keeps the cancel)."""

    async def scenario() -> bool:
        link = LinkMonitor("MOCK:Status:Clock")
        await link.connect(mock=True)
        device = AnsweringDevice()
        reader = asyncio.ensure_future(
            GuardedReadable(device, link).read() if guarded else device.read())
        await asyncio.sleep(0.01)  # the read waits for its reply
        device.reply.set_result({"x": {"value": 1.0, "timestamp": 0.0}})
        reader.cancel()
        await asyncio.wait([reader], timeout=2.0)
        return reader.cancelled()

    assert asyncio.run(scenario()) is (guarded or sys.version_info >= (3, 12))
