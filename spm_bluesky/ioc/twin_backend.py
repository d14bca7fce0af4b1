"""The IOC's twin backend: the digital twin in this process, one call at a time.

The IOC paces the twin's commands itself (``Sim:TimeScale``), so every outcome carries the
simulated time it took. The twin is always reachable: :meth:`TwinBackend.wait_lost` never
returns.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

import numpy as np

from spm_bluesky.ioc import twin_worker
from spm_bluesky.ioc.backend import InstrumentState, Outcome, SimControl, Truth
from spm_bluesky.ioc.twin_worker import TwinState, TwinWorker
from spm_bluesky.twin import Fault, Frame, Instrument

T = TypeVar("T")


def _done(_result: object) -> None:
    """Drop a twin call's return value (the time it took: the outcome carries it)."""


def _state(state: TwinState) -> InstrumentState:
    return InstrumentState(clock=state.clock, area_index=state.area_index,
                           contact=state.contact, crashed=state.crashed,
                           crash_count=state.crash_count, action_count=state.action_count,
                           z=state.z)


def _outcome(outcome: twin_worker.Outcome[T]) -> Outcome[T]:
    return Outcome(outcome.result, _state(outcome.state),
                   Truth(outcome.state.tip_class, outcome.state.damage_area), outcome.elapsed)


class _TwinSim:
    """The ``Sim:*`` controls of the in-process twin."""

    paces_in_ioc = True

    def __init__(self, worker: TwinWorker) -> None:
        self._worker = worker

    async def seed(self) -> int:
        return self._worker.seed

    async def set_time_scale(self, value: float) -> None:
        """Nothing to do: the IOC paces the twin."""

    async def inject_fault(self, fault: Fault) -> Outcome[None]:
        return _outcome(await self._worker.call(lambda twin: twin.inject_fault(fault)))

    async def degrade(self) -> Outcome[None]:
        return _outcome(await self._worker.call(lambda twin: _done(twin.degrade_tip())))


class TwinBackend:
    """:class:`~spm_bluesky.ioc.backend.Backend` over an :class:`Instrument` of seed ``seed``."""

    def __init__(self, seed: int) -> None:
        self.name = f"twin seed={seed}"
        self._worker = TwinWorker(Instrument(seed))
        self.sim: SimControl | None = _TwinSim(self._worker)

    async def _call(self, operation: Callable[[Instrument], T]) -> Outcome[T]:
        return _outcome(await self._worker.call(operation))

    async def connect(self) -> None:
        """Nothing to reach."""

    async def wait_lost(self) -> None:
        """The twin is never lost: wait forever."""
        await asyncio.Event().wait()

    async def state(self) -> Outcome[None]:
        state = await self._worker.state()
        return Outcome(None, _state(state), Truth(state.tip_class, state.damage_area))

    async def configure(self, frame: Frame) -> None:
        """Nothing to send: the frame goes with each scan."""

    async def scan(self, frame: Frame) -> Outcome[np.ndarray]:
        return await self._call(lambda twin: twin.scan(frame))

    async def pulse(self, x: float, y: float, bias: float, duration: float) -> Outcome[None]:
        return await self._call(lambda twin: _done(twin.pulse(x, y, bias, duration)))

    async def dip(self, x: float, y: float, depth: float) -> Outcome[None]:
        return await self._call(lambda twin: _done(twin.dip(x, y, depth)))

    async def approach(self) -> Outcome[None]:
        return await self._call(lambda twin: _done(twin.approach()))

    async def withdraw(self) -> Outcome[None]:
        return await self._call(lambda twin: _done(twin.withdraw()))

    async def move_area(self) -> Outcome[None]:
        return await self._call(lambda twin: _done(twin.move_area()))

    def close(self) -> None:
        self._worker.close()
