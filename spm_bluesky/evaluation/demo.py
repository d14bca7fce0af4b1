"""``spm-bluesky demo``: the whole system in one command, on the digital twin.

Starts the STM IOC and the embedded Tiled server (``spm-bluesky up``, loopback only, API
key; with ``--backend nanonis-sim`` also the Nanonis simulator, the IOC speaking the
Nanonis protocol to it, while plans and devices stay the same), runs an accelerated
autonomous session (``Sim:TimeScale`` 0) with a live progress line, writes the session
report from what Tiled stored, and stops the services it started, also on Ctrl-C (then the
report covers what was done) or SIGTERM. Documents go through the journal in the data
directory (:mod:`spm_bluesky.storage.durable`); the report waits until Tiled holds them all.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO, get_args

from spm_bluesky.autonomy.tally import ProgressLine, SessionTally
from spm_bluesky.evaluation.system import check_agent, release_ca
from spm_bluesky.report import ReportFiles, build_report
from spm_bluesky.services.launch import ServiceState, UpOptions, client_ca_env, down, up

#: The conditioning policies the demo offers (``--policy``): those of the registry that
#: run on an instrument (the oracle reads the twin's truth: evaluation only).
PolicyName = Literal["agent", "heuristic", "random"]
POLICIES: tuple[str, ...] = get_args(PolicyName)
#: What the demo can put behind the PVs (``--backend``): the IOC's own twin, or the Nanonis
#: simulator's twin behind a Nanonis IOC. A real controller is no demo.
BackendName = Literal["twin", "nanonis-sim"]
BACKENDS: tuple[str, ...] = get_args(BackendName)


@dataclass(frozen=True)
class DemoOptions:
    """What the demo runs, and where it keeps its data and report."""

    data_dir: Path
    hours: float = 2.0
    seed: int = 0
    out_dir: Path | None = None
    policy: PolicyName = "agent"
    agent: Path | None = None
    assessor: Path | None = None
    timeout: float = 60.0
    backend: BackendName = "twin"

    @property
    def report_dir(self) -> Path:
        """Where the report goes (default ``<data dir>/reports``)."""
        return self.out_dir or self.data_dir / "reports"


@dataclass(frozen=True)
class DemoResult:
    """What the demo did: the session, its counts, the report, the wall time."""

    session_uid: str
    tally: SessionTally
    report: ReportFiles
    wall_s: float
    interrupted: bool


def check_options(options: DemoOptions) -> None:
    """ValueError / MissingAgentError before anything starts (a bad option, no agent)."""
    if not options.hours > 0:
        raise ValueError(f"--hours must be positive, not {options.hours}")
    if options.policy not in POLICIES:
        raise ValueError(f"--policy must be one of {', '.join(POLICIES)}, not {options.policy}")
    if options.backend not in BACKENDS:
        raise ValueError(f"--backend must be one of {', '.join(BACKENDS)}, not "
                         f"{options.backend}")
    if options.policy == "agent":
        check_agent(options.agent, hint="or run the demo with --policy heuristic")


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM ends the demo like Ctrl-C, so the services are stopped either way."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_demo(options: DemoOptions, stream: TextIO | None = None) -> DemoResult:
    """Run the demo; see the module docstring. Returns where the report went."""
    out = stream if stream is not None else sys.stdout
    check_options(options)
    began = time.perf_counter()
    previous = ServiceState.read(options.data_dir)
    if previous is not None and previous.backend != options.backend:
        raise ValueError(f"the services of {options.data_dir} have backend "
                         f"{previous.backend}, not {options.backend}: `spm-bluesky down` first")
    state, started = up(UpOptions(data_dir=options.data_dir, seed=options.seed,
                                  timeout=options.timeout, backend=options.backend))
    behind = "" if state.sim_ports is None else (
        f" behind the Nanonis simulator on 127.0.0.1:{state.sim_ports[0]}")
    out.write(f"services {'started' if started else 'already up'} in {state.data_dir}: "
              f"IOC {state.prefix} on 127.0.0.1:{state.ca_port}{behind}, "
              f"Tiled {state.tiled_uri}\n")
    if state.console is not None:
        out.write(f"watch it live: the console at {state.console.address} (sign in with the "
                  f"API key in {state.data_dir}/tiled/api_key)\n")
    out.flush()
    try:
        with _sigterm_as_interrupt():
            return _session(options, state, began, out)
    finally:
        if started:
            down(options.data_dir)
            out.write(f"stopped the services; data stay in {options.data_dir}\n")


def _session(options: DemoOptions, state: Any, began: float, out: TextIO) -> DemoResult:
    """The session, its documents journaled and drained into Tiled."""
    from spm_bluesky.ml.agent.policies import policy_by_name
    from spm_bluesky.ml.assessor.assessor import load_assessor
    from spm_bluesky.storage import connect
    from spm_bluesky.storage.durable import durable_path

    os.environ.update(client_ca_env(state.epics_env))  # before the first CA client starts
    assessor = load_assessor(options.assessor)
    policy = policy_by_name(options.policy, seed=options.seed, agent=options.agent)
    client = connect(state.tiled_uri, state.api_key)
    with durable_path(options.data_dir, lambda: connect(state.tiled_uri, state.api_key)
                      ) as document_path:
        return _run_session(options, state, began, out, client, document_path, assessor,
                            policy)


def _run_session(options: DemoOptions, state: Any, began: float, out: TextIO, client: Any,
                 document_path: Any, assessor: Any, policy: Any) -> DemoResult:
    """Run the session plan with a progress line; report from Tiled once it holds it all."""
    from bluesky import RunEngine
    from bluesky.run_engine import call_in_bluesky_event_loop
    from bluesky.utils import RunEngineInterrupted

    from spm_bluesky.devices.stm import STM
    from spm_bluesky.plans.autonomous import autonomous_session
    from spm_bluesky.plans.episode import policy_model_id

    RE = RunEngine(call_returns_result=True)
    RE.subscribe(document_path)
    tally = SessionTally()
    line = ProgressLine(tally, hours=options.hours)
    RE.subscribe(line)
    stm = STM(state.prefix, name="stm", sim=True)
    call_in_bluesky_event_loop(stm.connect(timeout=options.timeout))
    session_uid = uuid.uuid4().hex
    out.write(f"session {session_uid}: {options.hours:g} simulated h, twin seed "
              f"{options.seed}, backend {options.backend}, assessor {assessor.model_id}, "
              f"policy {policy_model_id(policy)} (Ctrl-C stops and reports)\n")
    out.flush()
    interrupted = False
    try:
        RE(autonomous_session(stm, assessor, policy, hours=options.hours,
                              session_uid=session_uid, safety=document_path.mark))
    except (KeyboardInterrupt, RunEngineInterrupted):
        interrupted = True
        if RE.state != "idle":
            RE.stop()
    finally:
        line.close()
    document_path.wait_stored()  # the report reads Tiled
    files = build_report(client, session_uid, options.report_dir)
    release_ca()
    return DemoResult(session_uid, tally, files, time.perf_counter() - began, interrupted)
