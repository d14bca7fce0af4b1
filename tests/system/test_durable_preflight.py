"""Check before acting: a session whose journal cannot be written is refused before any PV
is written (the IOC's counters, clock and frame settings stay as they were)."""

from __future__ import annotations

import pytest

from spm_bluesky.services.launch import UpOptions, client_ca_env, down, environ_set, up
from tests.ca_sync import read
from tests.session_helpers import spm

pytestmark = pytest.mark.integration

WATCHED = ("Scan:FrameCounter", "Tip:ActionCounter", "Status:Clock", "Scan:CenterX",
           "Scan:Size", "Scan:Pixels", "Status:CrashCount")


def _snapshot(state) -> dict[str, list]:
    with environ_set(client_ca_env(state.epics_env)):
        return {pv: read(state.prefix + pv, timeout=5).data.tolist() for pv in WATCHED}


def test_unwritable_journal_is_refused_before_any_pv_is_written(tmp_path):
    data_dir = tmp_path / "data"
    state, _ = up(UpOptions(data_dir=data_dir, seed=53, console=False))
    try:
        (data_dir / "journal").write_text("a file where the journal directory goes")
        before = _snapshot(state)
        result = spm("run", "--images", "5", "--seed", "53", "--policy", "heuristic",
                     "--data-dir", data_dir)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "cannot write the journal" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1  # one line, no traceback
        assert "session " not in result.stdout  # no session began
        assert _snapshot(state) == before
    finally:
        down(data_dir)
