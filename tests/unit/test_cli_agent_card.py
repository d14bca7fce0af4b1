"""The agent's model card is built and written by ``spm_bluesky.ml.agent.card``, not by the
command line; it renders the shipped card exactly and writes both files beside the weights."""

from __future__ import annotations

import json
from pathlib import Path

from spm_bluesky.ml.agent.card import (
    AgentTraining,
    build_agent_card,
    render_agent_markdown,
    write_agent_card,
)
from spm_bluesky.ml.card import WEIGHTS_DIR


def test_the_shipped_card_renders_to_the_shipped_markdown():
    card = json.loads((WEIGHTS_DIR / "agent.card.json").read_text())
    assert render_agent_markdown(card) == (WEIGHTS_DIR / "AGENT_CARD.md").read_text()


def test_a_new_card_records_the_command_and_is_written_beside_the_weights(tmp_path: Path):
    shipped = json.loads((WEIGHTS_DIR / "agent.card.json").read_text())
    weights = tmp_path / "mine.pt"
    training = AgentTraining(seed=3, steps=100, eval_episodes=20, eval_seed=4,
                             source="twin episodes", from_tiled="http://127.0.0.1:8000")
    card = build_agent_card(
        weights=weights, data=b"weights", model_id="dqn-agent-x", assessor_file="assessor.pt",
        assessor_model_id="tipnet-y", training=training, config={"seed": 3}, env_steps=100,
        episodes=7, wall_time_s=1.25, threads=2, report=shipped["held_out"]["report"],
        goals=shipped["held_out"]["goals"])
    assert card["training"]["command"] == (
        "spm-bluesky train agent --seed 3 --steps 100 --eval-episodes 20 --eval-seed 4 "
        "--from-tiled http://127.0.0.1:8000")
    assert card["held_out"]["command"] == "spm-bluesky eval agent --episodes 20 --seed 4"
    assert card["file"] == "mine.pt" and card["size_bytes"] == 7
    assert card["training"]["data"].endswith("k = 0 .. 6")
    json_path = write_agent_card(card, weights)
    assert json_path == tmp_path / "mine.card.json"
    assert json.loads(json_path.read_text()) == card
    assert "95 % CI" in (tmp_path / "MINE_CARD.md").read_text()
