"""Run the digital twin off the IOC's event loop, one call at a time.

The twin is not thread-safe and its numpy work would stall caproto's event loop, so every
call goes through one dedicated thread. Each call also snapshots the scalar state the IOC
mirrors into its PVs, in the same job, so the snapshot matches the call's outcome.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

from spm_bluesky.twin import Instrument, TipClass

T = TypeVar("T")


@dataclass(frozen=True)
class TwinState:
    """The twin's scalar state, as mirrored into the ``Status:*``, counter and ``Sim:*`` PVs."""

    clock: float
    area_index: int
    contact: bool
    crashed: bool
    crash_count: int
    action_count: int
    z: float
    tip_class: TipClass
    damage_area: float

    @classmethod
    def of(cls, twin: Instrument) -> TwinState:
        """Read the state of ``twin`` (call on the twin's thread)."""
        return cls(
            clock=twin.clock,
            area_index=twin.area_index,
            contact=twin.contact,
            crashed=twin.crashed,
            crash_count=twin.crash_count,
            action_count=twin.action_count,
            z=twin.z,
            tip_class=twin.tip_class,
            damage_area=twin.damage_area,
        )


@dataclass(frozen=True)
class Outcome(Generic[T]):
    """What one twin call returned, the state right after it and the simulated time it took."""

    result: T
    state: TwinState
    elapsed: float


class TwinWorker:
    """Owns an :class:`Instrument` and runs every call to it on one thread, in order."""

    def __init__(self, twin: Instrument) -> None:
        self._twin = twin
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="twin")

    @property
    def seed(self) -> int:
        """The twin's seed (immutable, so safe to read from any thread)."""
        return self._twin.seed

    async def call(self, operation: Callable[[Instrument], T]) -> Outcome[T]:
        """Run ``operation(twin)`` on the twin's thread; return its result, state and time."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, operation)

    async def state(self) -> TwinState:
        """Snapshot the twin's state once the calls queued before have finished."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, TwinState.of, self._twin)

    def close(self) -> None:
        """Stop the thread; calls not yet started are dropped."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _call(self, operation: Callable[[Instrument], T]) -> Outcome[T]:
        before = self._twin.clock
        result = operation(self._twin)
        state = TwinState.of(self._twin)
        return Outcome(result, state, state.clock - before)
