"""The seam between the IOC's PVs and what stands behind them: the twin, or a controller.

:class:`~spm_bluesky.ioc.stm_ioc.StmIOC` enforces the limits, queues the commands and
mirrors state into PVs; a :class:`Backend` carries the commands out. Two exist:

- :class:`~spm_bluesky.ioc.twin_backend.TwinBackend`: the digital twin in this process;
- :class:`~spm_bluesky.ioc.nanonis_backend.NanonisBackend`: a Nanonis controller (or its
  simulator) over the TCP programming interface.

A backend that simulates also offers :class:`SimControl` (the ``Sim:*`` PVs): the true tip
class, faults, tip degradation and pacing. A real controller has none of these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import numpy as np

from spm_bluesky.twin import Fault, Frame, TipClass

T = TypeVar("T")


class BackendError(RuntimeError):
    """A command or setting the instrument refused; the text is the instrument's."""


class ControllerLost(ConnectionError):
    """The instrument cannot be reached: the IOC stops serving until it answers again."""


@dataclass(frozen=True)
class InstrumentState:
    """The scalar state mirrored into ``Status:*``, ``Tip:ActionCounter`` and
    ``Coarse:AreaIndex`` after each command."""

    clock: float
    area_index: int
    contact: bool
    crashed: bool
    crash_count: int
    action_count: int
    z: float
    #: The tunnelling current (A).
    current: float


@dataclass(frozen=True)
class Truth:
    """What only a simulation knows (the ``Sim:*`` read-backs): never used for decisions."""

    tip_class: TipClass
    damage_area: float


@dataclass(frozen=True)
class Outcome(Generic[T]):
    """What one command returned, the state right after it, and pacing left to the IOC.

    ``elapsed`` is the simulated time the command took when the IOC paces it
    (``Sim:TimeScale``); 0 when the backend paces itself (a controller takes real time).
    """

    result: T
    state: InstrumentState
    truth: Truth | None = None
    elapsed: float = 0.0


class SimControl(Protocol):
    """The twin-only controls behind the ``Sim:*`` PVs."""

    #: True if the IOC paces commands (``elapsed x Sim:TimeScale``); False if the
    #: simulation paces itself and only needs to be told the time scale.
    paces_in_ioc: bool

    async def seed(self) -> int:
        """The twin's seed."""

    async def set_time_scale(self, value: float) -> None:
        """Change the pacing of a self-paced simulation (no-op when the IOC paces)."""

    async def inject_fault(self, fault: Fault) -> Outcome[None]:
        """Make ``fault`` happen now."""

    async def degrade(self) -> Outcome[None]:
        """Degrade the tip on purpose."""


class Backend(Protocol):
    """The instrument behind the PVs. Every method may raise :class:`BackendError` (the
    command or setting is refused; the put fails) or :class:`ControllerLost`."""

    #: A human-readable name for the ready line and the log ("twin", "nanonis ...").
    name: str
    #: The ``Sim:*`` controls, or None for a real controller (the IOC then has no ``Sim:*``).
    sim: SimControl | None

    async def connect(self) -> None:
        """Reach the instrument and give it the IOC's settings (:meth:`configure`'s last)."""

    async def wait_lost(self) -> None:
        """Return once the instrument has been found unreachable (never, for the twin)."""

    async def state(self) -> Outcome[None]:
        """The present state (after the commands already queued)."""

    async def configure(self, frame: Frame) -> None:
        """Apply the scan settings of ``frame`` (already checked against the limits)."""

    async def scan(self, frame: Frame) -> Outcome[np.ndarray]:
        """Scan one frame: float32 heights (m), ``pixels x pixels``, row 0 scanned first."""

    async def pulse(self, x: float, y: float, bias: float, duration: float) -> Outcome[None]:
        """A bias pulse of ``bias`` V for ``duration`` s at (x, y)."""

    async def dip(self, x: float, y: float, depth: float) -> Outcome[None]:
        """Push the tip ``depth`` m toward the sample at (x, y)."""

    async def approach(self) -> Outcome[None]:
        """Approach into tunnelling range."""

    async def withdraw(self) -> Outcome[None]:
        """Retract the tip out of tunnelling range."""

    async def move_area(self) -> Outcome[None]:
        """Withdraw, coarse-step to a fresh approach area and approach there."""

    def close(self) -> None:
        """Release the instrument (threads, connections)."""
