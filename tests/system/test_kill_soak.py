"""SIGKILL of ``spm-bluesky run`` at a random moment of a coarse move, followed by ``run
--resume``: the code of ``benchmarks/soak_kills.py`` with one kill. Nothing journaled is lost
or stored twice (by content), the rebuilt counters match the journal, the resumed leg scans
no used disc and no crash zone, and no run is left open.

The benchmark kills in all four phases, 20 times and more. Each kill costs a leg of the
session and its resume in CPU, so the suite kills here only where no other test does: in a
coarse move. Kills while scanning are in ``test_recovery.py`` (the stopped-and-killed
session); kills during conditioning and in the approach after a crash (as soon as its crash
mark is durable) in ``test_durable_kills.py``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SOAK = Path(__file__).resolve().parents[2] / "benchmarks" / "soak_kills.py"


def _soak_module():
    spec = importlib.util.spec_from_file_location("soak_kills", SOAK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_kill_in_a_coarse_move_loses_nothing_and_resumes_safely(tmp_path):
    soak = _soak_module()
    phases = ("coarse_move",)
    kills, totals = soak.run_soak(tmp_path / "data", kills=len(phases), seed=3,
                                  final_images=20, phases=phases)
    print(soak.table(kills, totals))
    assert sorted(kill.phase for kill in kills) == sorted(phases)
    for kill in kills:
        assert kill.images_before > 0, kill
        assert (kill.lost, kill.duplicated, kill.violations) == (0, 0, 0), kill
        assert kill.spot_violations == 0, kill
        assert kill.counters_ok, kill
        assert kill.images_after == kill.images_before, kill
    assert totals["left_open"] == 0 and totals["missing"] == 0
    assert totals["stored"] == totals["distinct"] == totals["images"]
    assert totals["aborted"] == len(kills)  # each kill left exactly its run in flight
    assert totals["final"]["crashes"] >= sum(k.phase == "crash_approach" for k in kills)
