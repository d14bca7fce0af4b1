"""``spm-bluesky up --backend nanonis-sim`` for real: the simulator, the Nanonis IOC and Tiled
as detached processes; ``status`` and ``down`` know the simulator, and ``up`` starts a dead
simulator again on its ports, where the IOC finds it by itself."""

from __future__ import annotations

import time

import pytest

from spm_bluesky.services.launch import (
    UpOptions,
    down,
    environ_set,
    ioc_answers,
    status,
    up,
)
from spm_bluesky.services.nanonis_sim import truth_state
from tests.ca_sync import read, write

pytestmark = pytest.mark.integration


def test_up_status_restart_and_down_with_the_nanonis_simulator(tmp_path):
    data_dir = tmp_path / "data"
    state, started = up(UpOptions(data_dir=data_dir, seed=4, backend="nanonis-sim"))
    try:
        assert started and state.backend == "nanonis-sim" and state.sim
        assert set(state.records()) == {"ioc", "tiled", "nanonis-sim", "console"}
        assert state.sim_ports is not None
        assert "--backend" in state.ioc_args and "--truth" in state.ioc_args
        _, services = status(data_dir)
        assert [(s.name, s.running, s.answering) for s in services] == [
            ("ioc", True, True), ("tiled", True, True), ("nanonis-sim", True, True),
            ("console", True, True)]

        # The IOC is behind the simulator: a frame over CA is a frame of the simulator's twin.
        with environ_set(state.epics_env):
            write(state.prefix + "Scan:Acquire", 1, notify=True, timeout=10)
            seed = read(state.prefix + "Sim:Seed", timeout=10).data[0]
        truth = truth_state(state.sim_ports[1])
        assert truth is not None and truth["frame_count"] == 1 and seed == truth["seed"] == 4

        # The simulator dies: status says so, the IOC stops answering, and up starts the
        # simulator again alone, on its ports; the IOC serves again.
        process = state.nanonis_sim.process() if state.nanonis_sim else None
        assert process is not None
        process.kill()
        process.wait(10)
        _, services = status(data_dir)
        assert [(s.name, s.running) for s in services][2] == ("nanonis-sim", False)
        again, started = up(UpOptions(data_dir=data_dir, backend="nanonis-sim"))
        assert started and again.sim_ports == state.sim_ports and again.ioc == state.ioc
        assert again.nanonis_sim is not None and again.nanonis_sim.pid != process.pid
        deadline = time.monotonic() + 30
        while ioc_answers(state.prefix, state.epics_env) is None:
            assert time.monotonic() < deadline, "the IOC did not serve again"
            time.sleep(0.2)
        truth = truth_state(state.sim_ports[1])
        assert truth is not None and truth["frame_count"] == 0  # a fresh simulator
    finally:
        stopped = down(data_dir)
    assert stopped is not None
    for record in stopped.records().values():
        assert not record.alive()
