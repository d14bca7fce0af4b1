"""``spm-bluesky run``: its arguments and the clear refusal without agent weights."""

from __future__ import annotations

from spm_bluesky.commandline import main as cli
from spm_bluesky.ml.agent import dqn


def test_run_needs_a_stop_condition(capsys):
    assert cli.main(["run", "--policy", "heuristic"]) == 2
    err = capsys.readouterr().err
    assert "give --hours or --images" in err and len(err.splitlines()) == 1


def test_run_with_the_agent_but_no_weights_says_what_to_do(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(dqn, "AGENT_WEIGHTS", tmp_path / "agent.pt")
    assert cli.main(["run", "--images", "5", "--policy", "agent",
                     "--data-dir", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err
    assert "needs the trained agent" in err and "--policy heuristic" in err
    assert not (tmp_path / "data").exists()  # nothing was started
