"""The IOC's twin backend: the digital twin in this process, one call at a time.

The IOC paces the twin's commands itself (``Sim:TimeScale``), so every outcome carries the
simulated time it took. The twin is always reachable: :meth:`TwinBackend.wait_lost` never
returns.

The twin images at constant current and has no current of its own: the tunnelling current
(``Status:Current``) is what its z feedback holds, the setpoint of the settings of record,
while in tunnelling range, and 0 out of it, as the Nanonis simulator's ``Current.Get``
answers.
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


def _state(state: TwinState, setpoint: float) -> InstrumentState:
    return InstrumentState(clock=state.clock, area_index=state.area_index,
                           contact=state.contact, crashed=state.crashed,
                           crash_count=state.crash_count, action_count=state.action_count,
                           z=state.z, current=setpoint if state.contact else 0.0)


class _TwinSim:
    """The ``Sim:*`` controls of the in-process twin."""

    paces_in_ioc = True

    def __init__(self, backend: TwinBackend) -> None:
        self._backend = backend

    async def seed(self) -> int:
        return self._backend._worker.seed

    async def set_time_scale(self, value: float) -> None:
        """Nothing to do: the IOC paces the twin."""

    async def inject_fault(self, fault: Fault) -> Outcome[None]:
        return await self._backend._call(lambda twin: twin.inject_fault(fault))

    async def degrade(self) -> Outcome[None]:
        return await self._backend._call(lambda twin: _done(twin.degrade_tip()))


class TwinBackend:
    """:class:`~spm_bluesky.ioc.backend.Backend` over an :class:`Instrument` of seed ``seed``."""

    def __init__(self, seed: int) -> None:
        self.name = f"twin seed={seed}"
        self._worker = TwinWorker(Instrument(seed))
        self._setpoint = Frame().setpoint  # of the settings of record: the feedback's current
        self.sim: SimControl | None = _TwinSim(self)

    def _outcome(self, outcome: twin_worker.Outcome[T]) -> Outcome[T]:
        state = outcome.state
        return Outcome(outcome.result, _state(state, self._setpoint),
                       Truth(state.tip_class, state.damage_area), outcome.elapsed)

    async def _call(self, operation: Callable[[Instrument], T]) -> Outcome[T]:
        return self._outcome(await self._worker.call(operation))

    async def connect(self) -> None:
        """Nothing to reach."""

    async def wait_lost(self) -> None:
        """The twin is never lost: wait forever."""
        await asyncio.Event().wait()

    async def state(self) -> Outcome[None]:
        state = await self._worker.state()
        return Outcome(None, _state(state, self._setpoint),
                       Truth(state.tip_class, state.damage_area))

    async def configure(self, frame: Frame) -> None:
        """Keep the setpoint (the feedback's current); the frame goes with each scan."""
        self._setpoint = frame.setpoint

    async def scan(self, frame: Frame) -> Outcome[np.ndarray]:
        self._setpoint = frame.setpoint
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
