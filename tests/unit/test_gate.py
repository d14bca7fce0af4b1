"""The gated assessor: two networks and a gate (spm_bluesky.ml.assessor.gate).

The gate's fit, its routing (each frame judged by the network the gate picks, the unsure
scores relative to that network's threshold), the gate file (round trip, refusal of changed
weights, no pickles), ``load_assessor`` telling a gate file from a weight file, and
``spm-bluesky train gate`` end to end on a small configuration and on bad input, and the
shipped gate file with its two networks and cards.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from spm_bluesky.domain import processing  # noqa: E402
from spm_bluesky.ml.assessor.assessor import (  # noqa: E402
    TipNetAssessor,
    load_assessor,
    load_network,
    serialise,
)
from spm_bluesky.ml.assessor.config import GateConfig  # noqa: E402
from spm_bluesky.ml.assessor.gate import (  # noqa: E402
    GatedAssessor,
    GateFile,
    LogisticGate,
    fit_logistic,
    frame_features,
    load_gated,
    relative_path,
)
from spm_bluesky.ml.assessor.gate_training import command_for, eval_command  # noqa: E402
from spm_bluesky.ml.assessor.model import TipNet, stages_for  # noqa: E402
from spm_bluesky.ml.assessor.synth import generate as synth  # noqa: E402
from spm_bluesky.ml.assessor.synth.config import SynthConfig  # noqa: E402
from spm_bluesky.ml.assessor.unsure import UnsureCalibration  # noqa: E402
from spm_bluesky.ml.card import GATE, GENERALIST, WEIGHTS, read_card  # noqa: E402
from tests.unit.test_cli_errors import assert_one_line, spm  # noqa: E402


def _network(path: Path, seed: int, width: float = 0.25) -> Path:
    torch.manual_seed(seed)
    path.write_bytes(serialise(TipNet(stages_for(width)).eval()))
    return path


def _frames(count: int) -> list[np.ndarray]:
    images = [synth.render(seed, 0, SynthConfig())[0] for seed in range(count)]
    return processing.prepare_batch(images, [10e-9] * count)


def _calibration(model_id: str, features: int, threshold: float) -> UnsureCalibration:
    return UnsureCalibration(model_id, np.zeros((5, features)), np.eye(features), threshold,
                             0.98, 0.02, 1, 1)


def test_the_logistic_gate_separates_and_is_deterministic():
    rng = np.random.default_rng(0)
    twin = rng.normal(1.0, 1.0, (300, 6))
    other = rng.normal(-1.0, 1.0, (300, 6))
    gate = fit_logistic(twin, other)
    assert np.mean(gate.p_twin(rng.normal(1.0, 1.0, (500, 6))) >= 0.5) > 0.95
    assert np.mean(gate.p_twin(rng.normal(-1.0, 1.0, (500, 6))) < 0.5) > 0.95
    again = fit_logistic(twin, other)
    np.testing.assert_array_equal(gate.weight, again.weight)
    assert gate.bias == again.bias


def test_frame_features_are_the_mean_and_maximum_of_each_frames_windows():
    windows = np.array([[1.0, 4.0], [3.0, 0.0], [5.0, 5.0]])
    features = frame_features(windows, [2, 1])
    np.testing.assert_array_equal(features, [[2.0, 2.0, 3.0, 4.0], [5.0, 5.0, 5.0, 5.0]])


def test_each_frame_is_judged_by_the_network_the_gate_picks(tmp_path):
    """A gate that sends every frame far away gives the generalist's verdicts, one that keeps
    every frame the specialist's; a gate that splits the frames keeps the specialist's verdict
    on its side and mixes the two by p(twin) on the other, with unsure scores relative to the
    threshold of the network the frame went to."""
    specialist = load_network(_network(tmp_path / "s.pt", 1), calibrated=False)
    generalist = load_network(_network(tmp_path / "g.pt", 2), calibrated=False)
    frames = _frames(6)
    k = 2 * specialist.window_features(frames[:1]).shape[1]

    def gated(bias: float, weight: np.ndarray | None = None) -> GatedAssessor:
        gate = LogisticGate(np.zeros(k), np.ones(k),
                            np.zeros(k) if weight is None else weight, bias)
        return GatedAssessor(specialist, generalist, gate, 0.5, "gated-test")

    ps, pg = specialist.probabilities(frames), generalist.probabilities(frames)
    assert not np.allclose(ps, pg)
    probabilities, _, routed = gated(-50.0).judge_routes(frames)
    np.testing.assert_allclose(probabilities, pg)
    assert routed.all()
    probabilities, _, routed = gated(50.0).judge_routes(frames)
    np.testing.assert_allclose(probabilities, ps)
    assert not routed.any()

    features = frame_features(specialist.window_features(frames), [len(f) for f in frames])
    column = int(np.argmax(features.std(axis=0)))
    split = features[:, column] > np.median(features[:, column])  # these stay
    assert 0 < split.sum() < len(split)
    weight = np.zeros(k)
    weight[column] = 1e4
    gate = gated(-1e4 * float(np.median(features[:, column])), weight)
    specialist.calibration = _calibration(specialist.model_id, k // 2, 2.0)
    generalist.calibration = _calibration(generalist.model_id, k // 2, 8.0)
    probabilities, scores, routed = gate.judge_routes(frames)
    np.testing.assert_array_equal(routed, ~split)
    np.testing.assert_allclose(probabilities[split], ps[split])
    kept = (gate.gate.p_twin(features) / gate.threshold)[:, None]  # the specialist's share
    assert (kept[~split] < 1).all() and (kept[split] >= 1).all()
    mixed = kept * ps + (1 - kept) * pg  # mixed by p(twin), continuous at the threshold
    np.testing.assert_allclose(probabilities[~split], mixed[~split])
    s_scores, g_scores = specialist.judge(frames)[1], generalist.judge(frames)[1]
    np.testing.assert_allclose(scores[split], s_scores[split] / 2.0)
    np.testing.assert_allclose(scores[~split], g_scores[~split] / 8.0)
    np.testing.assert_array_equal(gate.is_unsure(np.array([0.5, 1.5])), [False, True])
    assessments = gate.assess_batch([synth.render(0, 0, SynthConfig())[0]] * 2, 10e-9)
    assert [a.model_id for a in assessments] == ["gated-test"] * 2


def test_a_gate_file_round_trips_and_refuses_changed_weights(tmp_path):
    (tmp_path / "nets").mkdir()
    specialist = _network(tmp_path / "nets" / "s.pt", 1)
    generalist = _network(tmp_path / "nets" / "g.pt", 2)
    out = tmp_path / "gates" / "gate.npz"
    out.parent.mkdir()
    rng = np.random.default_rng(0)
    k = 2 * load_network(specialist).window_features(_frames(1)).shape[1]
    gate = LogisticGate(rng.normal(size=k), np.ones(k), rng.normal(size=k), 0.3)
    ids = [load_network(p).model_id for p in (specialist, generalist)]
    data = GateFile(relative_path(specialist, out), ids[0], relative_path(generalist, out),
                    ids[1], gate, 0.4, {"frames": [1, 1]}).save(out)
    read = GateFile.read(out)
    assert read.specialist == "../nets/s.pt" and read.generalist_id == ids[1]
    np.testing.assert_array_equal(read.gate.weight, gate.weight)
    assert read.threshold == 0.4 and read.gate.bias == 0.3
    loaded = load_assessor(out)  # a gate file gives the gated pair
    assert isinstance(loaded, GatedAssessor)
    assert loaded.model_id == f"gated-{hashlib.sha256(data).hexdigest()[:12]}"
    assert isinstance(load_assessor(specialist), TipNetAssessor)
    _network(generalist, 3)  # retrained: the gate no longer fits it
    with pytest.raises(ValueError, match="fit the gate again"):
        load_gated(out)
    np.savez(tmp_path / "other.npz", header=np.array('{"kind": "unsure"}'))
    with pytest.raises(ValueError, match="is not a gate file"):
        load_assessor(tmp_path / "other.npz")
    with pytest.raises(FileNotFoundError, match="train gate"):
        load_assessor(tmp_path / "absent.npz")


def test_train_gate_end_to_end_writes_the_gate_and_its_card(tmp_path, capsys):
    """The command fits the gate on rendered twin and synthetic frames, writes the gate file
    and its card (JSON and Markdown), and the gate file works as an assessor; a card's
    real-set figures go into the gate's card."""
    from spm_bluesky.ml.assessor.gate_training import train_gate

    specialist = _network(tmp_path / "s.pt", 1)
    generalist = _network(tmp_path / "g.pt", 2)
    config = replace(GateConfig(), fit_frames=12, eval_images=10, synth_eval_images=5,
                     workers=1)
    result = train_gate(generalist, tmp_path / "gate.npz", specialist, config,
                        progress=False)
    card = read_card(result.gate)
    assert card["kind"] == "gated" and card["model_id"] == result.model_id
    assert card["specialist"]["file"] == "s.pt" and card["generalist"]["file"] == "g.pt"
    assert card["gate"]["fit"]["frames"] == [12, 12]
    assert 0.0 <= card["routing"]["twin_held_out"] <= 1.0
    assert card["held_out"]["all_frames"]["n_images"] == 10
    assert "--fit-frames 12" in card["training"]["command"]
    markdown = (tmp_path / "GATE_CARD.md").read_text()
    assert result.model_id in markdown and "## Held-out evaluation" in markdown
    assert load_assessor(result.gate).model_id == result.model_id


@pytest.mark.parametrize(("args", "message"), [
    (["--out", "gate.pt"], "a gate file ends in .npz"),
    (["--out", "gate.npz", "--threshold", "1.5"], "1.5 is not between 0 and 1"),
    (["--out", "gate.npz", "--generalist", "s.pt"], "the same file"),
])
def test_train_gate_refuses_bad_input_in_one_line(tmp_path, capsys, monkeypatch, args,
                                                  message):
    monkeypatch.chdir(tmp_path)
    _network(tmp_path / "s.pt", 1)
    _network(tmp_path / "g.pt", 2)
    if "--generalist" not in args:
        args = [*args, "--generalist", "g.pt"]
    code, _, err = spm(capsys, "train", "gate", "--specialist", "s.pt", *args)
    assert code == 2
    assert_one_line(err)
    assert message in err
    assert not list(tmp_path.glob("gate*"))


def test_the_shipped_assessor_is_the_gate_over_the_shipped_networks():
    """``load_assessor()`` is the shipped gate file over the shipped specialist and
    generalist, each matching its card, both calibrated, and the cards' commands are the ones
    that regenerate the files."""
    assessor = load_assessor()
    assert isinstance(assessor, GatedAssessor) and assessor.abstains
    assert assessor.specialist.model_id == load_network().model_id
    assert assessor.generalist.model_id == load_network(GENERALIST).model_id
    gate_card, generalist_card = read_card(GATE), read_card(GENERALIST)
    for card, path in ((gate_card, GATE), (generalist_card, GENERALIST)):
        data = path.read_bytes()
        assert card["sha256"] == hashlib.sha256(data).hexdigest()
        assert card["size_bytes"] == len(data) < 4 * 2**20 and card["file"] == path.name
    assert gate_card["model_id"] == assessor.model_id
    assert generalist_card["model_id"] == assessor.generalist.model_id
    assert gate_card["specialist"]["model_id"] == assessor.specialist.model_id
    assert gate_card["training"]["command"].startswith("spm-bluesky train gate")
    assert "--out" not in gate_card["training"]["command"]  # the shipped files: defaults
    assert generalist_card["training"]["command"].startswith("spm-bluesky train assessor")
    assert generalist_card["training"]["command"].endswith(
        "--out spm_bluesky/ml/weights/generalist.pt")
    assert "--synth-images" in generalist_card["training"]["command"]


def test_the_gates_command_leaves_the_shipped_files_out(tmp_path):
    assert command_for(GENERALIST, GATE, WEIGHTS, GateConfig()) == "spm-bluesky train gate"
    assert command_for(GENERALIST, GATE, None, replace(GateConfig(), threshold=0.3)) == \
        "spm-bluesky train gate --threshold 0.3"
    out = tmp_path / "gate.npz"
    assert command_for(tmp_path / "g.pt", out, None, GateConfig()) == \
        f"spm-bluesky train gate --generalist {tmp_path / 'g.pt'} --out {out}"
    assert eval_command(GATE, 5000) == "spm-bluesky eval assessor --images 5000"
    assert eval_command(out, 10) == f"spm-bluesky eval assessor --weights {out} --images 10"
