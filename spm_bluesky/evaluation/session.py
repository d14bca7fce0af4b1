"""``spm-bluesky eval session``: the autonomous loop with four systems on the same twin.

Each system (:class:`~spm_bluesky.evaluation.system.System`) runs
:func:`spm_bluesky.plans.autonomous.autonomous_session` for the same simulated hours
against a fresh IOC with the same twin seed:

============  ==================================================================
``full``      the shipped assessor and the trained agent (``agent.pt``)
``random``    the shipped assessor and a uniformly random conditioning policy
``heuristic`` the shipped assessor and the scripted escalation
``oracle``    an assessor and a policy that read the twin's true tip class
============  ==================================================================

Tips degrade by themselves on the twin about every 3 h of scanning, so in a short session
conditioning would be a small share of the time and the policies could not be told apart.
The evaluation therefore also degrades the tip on purpose (``Sim:Degrade``, DeepSPM's
training mode) every ``degrade_every`` instrument hours (default 0.5 h), at the same
instrument times for every system
(:class:`~spm_bluesky.evaluation.twin_pvs.DegradeSchedule`); 0 turns it off.

The oracle reads ``Sim:TipState`` over Channel Access (evaluation only: the twin's truth
is never a decision input on an instrument). It knows the true class (the most severe
defect), not defects hidden behind it, and acts optimally for that defect (the twin's value
iteration). Good images are images the loop kept whose true tip class was good.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from spm_bluesky.autonomy.tally import ProgressLine, SessionTally
from spm_bluesky.evaluation.system import System, build_system, check_agent, release_ca
from spm_bluesky.evaluation.twin_pvs import DegradeSchedule, TruthReader
from spm_bluesky.services.epics_env import free_port, loopback_ca_env
from spm_bluesky.services.launch import IocLaunch, ServiceError

#: Seconds an IOC may take to print its ready line.
IOC_READY_TIMEOUT = 60.0
#: Instrument hours between the tip degradations the evaluation forces (0: none).
DEGRADE_EVERY_HOURS = 0.5


@dataclass(frozen=True)
class SystemResult:
    """What one system achieved in the session: the JSON entry, plus time and wall time."""

    good_per_hour: float
    images: int
    good_images: int
    conditioning_episodes: int
    actions: int
    crashes: int
    hours: float
    wall_s: float

    def figures(self) -> dict[str, float | int]:
        """The JSON entry of ``eval session``."""
        keys = ("good_per_hour", "images", "good_images", "conditioning_episodes", "actions",
                "crashes")
        return {key: asdict(self)[key] for key in keys}


@dataclass(frozen=True)
class SessionEval:
    """The comparison: every system on the same twin seed for the same simulated hours."""

    hours: float
    seed: int
    systems: dict[str, SystemResult]
    degrade_every: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """``{"hours", "seed", "systems": {name: figures}}``."""
        return {"hours": self.hours, "seed": self.seed,
                "systems": {name: r.figures() for name, r in self.systems.items()}}

    def table(self) -> str:
        """A Markdown table of the figures, one row per system."""
        forced = (f"the tip degraded on purpose every {self.degrade_every:g} h"
                  if self.degrade_every else "no forced tip degradation")
        lines = [f"Session evaluation: {self.hours:g} simulated h, twin seed {self.seed}, "
                 f"{forced}", "",
                 "| system | good/h | images | good images | episodes | actions | crashes "
                 "| simulated h | wall s |",
                 "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name, r in self.systems.items():
            lines.append(f"| {name} | {r.good_per_hour:.1f} | {r.images} | {r.good_images} | "
                         f"{r.conditioning_episodes} | {r.actions} | {r.crashes} | "
                         f"{r.hours:.2f} | {r.wall_s:.0f} |")
        return "\n".join(lines)


@dataclass
class SimulatedIoc:
    """A twin IOC subprocess on loopback (:class:`~spm_bluesky.services.launch.IocLaunch`) with a
    fresh prefix; stop() ends it."""

    prefix: str
    port: int
    launch: IocLaunch

    @classmethod
    def start(cls, seed: int, port: int, log_dir: Path,
              timeout: float = IOC_READY_TIMEOUT) -> SimulatedIoc:
        """Start an IOC with a fresh prefix on ``port``, using this process's CA settings;
        wait until it answers over Channel Access."""
        prefix = f"E{uuid.uuid4().hex[:8]}:"
        epics_env = {k: v for k, v in os.environ.items() if k.startswith("EPICS_")}
        launch = IocLaunch.start(prefix, seed, port, log_dir / f"ioc-{prefix[:-1]}.log",
                                 epics_env)
        try:
            launch.wait_ready(prefix, epics_env, timeout)
        except ServiceError:
            launch.stop()
            raise
        return cls(prefix, port, launch)

    def stop(self) -> None:
        """Stop the IOC (SIGTERM, then SIGKILL) and reap it."""
        self.launch.stop()


def private_ca_ports(count: int) -> list[int]:
    """Give this process a loopback CA setup with ``count`` IOC ports; return the ports.

    EPICS reads its settings once per process, so every port an IOC of this evaluation will
    use is listed in ``EPICS_CA_ADDR_LIST`` before the first client starts.
    """
    ports: list[int] = []
    while len(ports) < count + 1:
        port = free_port()
        if port not in ports:
            ports.append(port)
    os.environ.update(loopback_ca_env(ports[0], ports[-1]))
    os.environ["EPICS_CA_ADDR_LIST"] = " ".join(f"127.0.0.1:{p}" for p in ports[:-1])
    return ports[:-1]


def run_system(system: System, hours: float, seed: int, port: int, log_dir: Path, *,
               assessor_path: Path | str | None = None, agent_path: Path | str | None = None,
               degraded_start: bool = False, degrade_every: float = DEGRADE_EVERY_HOURS,
               progress: bool = True) -> SystemResult:
    """Run the autonomous session of ``system`` on a fresh IOC; count from its documents.

    ``degraded_start`` degrades the twin's tip first (``Sim:Degrade``, DeepSPM's training
    mode), the same for every system, so that even a short session has to repair its tip;
    ``degrade_every`` (instrument hours, 0: never) degrades it again on that schedule.
    """
    import bluesky.plan_stubs as bps
    from bluesky import RunEngine
    from bluesky.run_engine import call_in_bluesky_event_loop

    from spm_bluesky.devices.stm import STM
    from spm_bluesky.plans.autonomous import autonomous_session

    ioc = SimulatedIoc.start(seed, port, log_dir)
    truth = schedule = None
    try:
        truth = TruthReader(ioc.prefix)
        if degrade_every:
            schedule = DegradeSchedule(ioc.prefix, degrade_every)
        assessor, policy = build_system(system, truth, seed, assessor_path, agent_path)
        RE = RunEngine(call_returns_result=True)
        stm = STM(ioc.prefix, name="stm", sim=True)
        call_in_bluesky_event_loop(stm.connect(timeout=10))
        if degraded_start:
            RE(bps.trigger(stm.sim.degrade, wait=True))
        tally = SessionTally()
        line = ProgressLine(tally, label=f"{system.value:<9}", hours=hours) if progress else None
        RE.subscribe(line if line is not None else tally)
        if schedule is not None:
            RE.subscribe(schedule)
        start = time.perf_counter()
        RE(autonomous_session(stm, assessor, policy, hours=hours,
                              session_uid=f"eval-{system.value}-{uuid.uuid4().hex[:8]}"))
        wall = time.perf_counter() - start
        if line is not None:
            line.close()
    finally:
        for reader in (truth, schedule):
            if reader is not None:
                reader.close()
        release_ca()
        ioc.stop()
    simulated = max(tally.simulated_hours, 1e-9)
    return SystemResult(good_per_hour=tally.truly_good / simulated, images=tally.images,
                        good_images=tally.truly_good,
                        conditioning_episodes=tally.episodes, actions=tally.actions,
                        crashes=tally.crashes, hours=tally.simulated_hours, wall_s=wall)


def evaluate_session(hours: float, seed: int, systems: Sequence[System] = tuple(System), *,
                     assessor_path: Path | str | None = None,
                     agent_path: Path | str | None = None, degraded_start: bool = False,
                     degrade_every: float = DEGRADE_EVERY_HOURS,
                     progress: bool = True) -> SessionEval:
    """Run every system in turn on the same twin seed and degradation schedule."""
    if not hours > 0:
        raise ValueError(f"hours={hours!r} must be positive")
    if not degrade_every >= 0:
        raise ValueError(f"degrade_every={degrade_every!r} must be 0 (never) or positive")
    if System.FULL in systems:
        check_agent(agent_path)
    ports = private_ca_ports(len(systems))
    results: dict[str, SystemResult] = {}
    with tempfile.TemporaryDirectory(prefix="spm-eval-logs-") as logs:
        for system, port in zip(systems, ports, strict=True):
            results[system.value] = run_system(system, hours, seed, port, Path(logs),
                                               assessor_path=assessor_path,
                                               agent_path=agent_path,
                                               degraded_start=degraded_start,
                                               degrade_every=degrade_every,
                                               progress=progress)
    return SessionEval(hours, seed, results, degrade_every)


def write_json(evaluation: SessionEval, path: Path | str) -> Path:
    """Write the comparison as JSON (``{"hours", "seed", "systems"}``); return the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(evaluation.to_json(), indent=2) + "\n")
    return out
