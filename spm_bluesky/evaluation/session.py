"""``spm-bluesky eval session``: the autonomous loop with four systems on the same twin.

Each system runs :func:`spm_bluesky.plans.autonomous.autonomous_session` for the same
simulated hours against a fresh IOC with the same twin seed:

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
instrument times for every system (:class:`DegradeSchedule`); 0 turns it off.

The oracle reads ``Sim:TipState`` over Channel Access: evaluation only (DESIGN.md), which is
why it lives here and not in ``plans/``. It knows the true class (the most severe defect),
not defects hidden behind it, and acts optimally for that defect (the twin's value
iteration). Good images are images the loop kept whose true tip class was good.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from spm_bluesky.autonomy.tally import FRAME_CLOCK_KEY, ProgressLine, SessionTally
from spm_bluesky.domain.actions import ACTIONS
from spm_bluesky.ml.agent.policies import HeuristicPolicy, RandomPolicy
from spm_bluesky.protocols import CLASSES, Assessment, Assessor, Decision, Policy
from spm_bluesky.services.epics_env import free_port, loopback_ca_env
from spm_bluesky.services.launch import IocLaunch, ServiceError

#: Seconds an IOC may take to print its ready line.
IOC_READY_TIMEOUT = 60.0
#: Instrument hours between the tip degradations the evaluation forces (0: none).
DEGRADE_EVERY_HOURS = 0.5
ORACLE_MODEL_ID = "oracle:Sim:TipState"


class System(StrEnum):
    """The four systems compared (issue 6)."""

    FULL = "full"
    RANDOM = "random"
    HEURISTIC = "heuristic"
    ORACLE = "oracle"


class _SimPv:
    """One of the twin's ``Sim:`` PVs over caproto's threading client: independent of the
    RunEngine's event loop, so it can be used from inside a plan or a callback."""

    def __init__(self, pv: str, timeout: float) -> None:
        from caproto.threading.client import Context

        self.timeout = timeout
        self._context = Context()
        (self._pv,) = self._context.get_pvs(pv, timeout=timeout)
        self._pv.wait_for_connection(timeout=timeout)

    def close(self) -> None:
        """Drop the CA connection."""
        self._context.disconnect()


class TruthReader(_SimPv):
    """Reads the twin's true tip class (``<prefix>Sim:TipState``): a blocking CA read,
    fresh on each call (no monitor lag)."""

    def __init__(self, prefix: str, timeout: float = 5.0) -> None:
        super().__init__(prefix + "Sim:TipState", timeout)

    def __call__(self) -> str:
        """The true tip class now, e.g. ``"good"`` or ``"blunt"``."""
        from caproto import ChannelType

        response = self._pv.read(data_type=ChannelType.STRING, timeout=self.timeout)
        return response.data[0].decode()


class DegradeSchedule(_SimPv):
    """A document callback that degrades the tip every ``every_hours`` of instrument time.

    Counts from the first frame's clock; the put (``Sim:Degrade``) goes from a thread with
    caproto's client, as an outside event would, and never blocks the RunEngine.
    """

    def __init__(self, prefix: str, every_hours: float, timeout: float = 10.0) -> None:
        super().__init__(prefix + "Sim:Degrade", timeout)
        self.every = every_hours * 3600.0
        self.forced = 0
        self._start: float | None = None
        self._puts: list[threading.Thread] = []

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        """Degrade the tip once the frame's clock has passed the next scheduled time."""
        clock = doc.get("data", {}).get(FRAME_CLOCK_KEY) if name == "event" else None
        if clock is None:
            return
        if self._start is None:
            self._start = float(clock)
        if float(clock) - self._start >= (self.forced + 1) * self.every:
            self.forced += 1
            put = threading.Thread(target=self._pv.write, args=([1],),
                                   kwargs={"wait": True, "timeout": self.timeout},
                                   daemon=True)
            put.start()
            self._puts.append(put)

    def close(self) -> None:
        """Let the puts in flight finish, then drop the CA connection."""
        for put in self._puts:
            put.join(self.timeout)
        super().close()


class OracleAssessor:
    """Says p(good) = 1 exactly when the twin's tip is truly good (one-hot on the class)."""

    model_id = ORACLE_MODEL_ID

    def __init__(self, truth: Callable[[], str]) -> None:
        self._truth = truth

    def assess(self, image_m: np.ndarray, scan_size_m: float) -> Assessment:
        """The true class as certain probabilities (the image is not looked at)."""
        label = self._truth()
        return Assessment({c: float(c == label) for c in CLASSES}, self.model_id)


class OracleSessionPolicy:
    """The allowed action that repairs the true class fastest (twin value iteration)."""

    name = "oracle"
    model_id = ORACLE_MODEL_ID

    def __init__(self, truth: Callable[[], str]) -> None:
        from spm_bluesky.twin.config import TipConfig
        from spm_bluesky.twin.tip import TipClass, add_defect, good_tip, oracle_action

        self._truth = truth
        config = TipConfig()
        rng = np.random.default_rng(0)
        good = good_tip(rng, config)
        self._states = {c.value: good if c is TipClass.GOOD else add_defect(good, c, rng, config)
                        for c in TipClass}
        self._choose = lambda label, allowed: oracle_action(self._states[label], allowed,
                                                            config)

    def reset(self, seed: int | None = None) -> None:
        """Nothing to reset: the oracle is deterministic."""

    def act(self, observation: dict[str, np.ndarray], mask: np.ndarray) -> Decision:
        """The best allowed action for the tip's true class."""
        allowed = tuple(a for a, ok in zip(ACTIONS, np.asarray(mask, bool), strict=True) if ok)
        if not allowed:
            raise ValueError("no action is allowed")
        return Decision(ACTIONS.index(self._choose(self._truth(), allowed)))


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
        """The JSON entry of ``eval session`` (exactly the keys of issue 6)."""
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


class MissingAgentError(RuntimeError):
    """The full system needs the trained agent's weights, and there are none."""


EVAL_HINT = "or leave 'full' out (e.g. --systems random,heuristic,oracle)"


def check_agent(agent_path: Path | str | None = None, hint: str = EVAL_HINT) -> Path:
    """The agent weight file the full system would use; MissingAgentError if absent.

    ``hint`` ends the message: what else the user can do.
    """
    from spm_bluesky.ml.card import WEIGHTS_DIR

    path = Path(agent_path) if agent_path else WEIGHTS_DIR / "agent.pt"
    if not path.is_file():
        raise MissingAgentError(
            f"the full system needs the trained conditioning agent, and there is no weight "
            f"file at {path}. Train it with `spm-bluesky train agent`, give one with --agent, "
            f"{hint}.")
    return path


def build_system(system: System, truth: Callable[[], str] | None, seed: int,
                 assessor_path: Path | str | None = None,
                 agent_path: Path | str | None = None) -> tuple[Assessor, Policy]:
    """The assessor and the policy of ``system`` (torch loads here, for the learnt models).

    ``truth`` (e.g. a :class:`TruthReader`) is needed by the oracle only.
    """
    if system is System.ORACLE:
        if truth is None:
            raise ValueError("the oracle needs the twin's truth (a TruthReader)")
        return OracleAssessor(truth), OracleSessionPolicy(truth)
    from spm_bluesky.ml.assessor.assessor import load_assessor

    assessor = load_assessor(assessor_path)
    if system is System.RANDOM:
        return assessor, RandomPolicy(seed)
    if system is System.HEURISTIC:
        return assessor, HeuristicPolicy()
    from spm_bluesky.ml.agent.dqn import load_agent

    return assessor, load_agent(check_agent(agent_path))


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


def release_ca() -> None:
    """Close this process's Channel Access channels (aioca) before their IOC stops.

    Otherwise libca prints a "Virtual circuit disconnect" warning for every IOC that goes
    away while channels to it are open.
    """
    import aioca

    aioca.purge_channel_caches()


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
        with tempfile.TemporaryDirectory(prefix="spm-eval-") as state:  # its area mask
            RE(autonomous_session(stm, assessor, policy, hours=hours,
                                  session_uid=f"eval-{system.value}-{uuid.uuid4().hex[:8]}",
                                  mask_path=str(Path(state) / "area_mask.json")))
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
    """Write the comparison as JSON (issue 6's shape); return the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(evaluation.to_json(), indent=2) + "\n")
    return out
