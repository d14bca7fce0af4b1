"""Fine-tuning pieces without Tiled: the split, the class checks, labels files, and a
fine-tune that must move the network towards its labels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from spm_bluesky.ml.assessor.assessor import TipNetAssessor, load_network
from spm_bluesky.ml.assessor.finetune import (
    ANCHORS,
    FALLBACK_ANCHOR,
    FinetuneConfig,
    FinetuneError,
    FrameLabel,
    LabelledFrame,
    _scan_majority,
    _stratified_folds,
    base_network,
    base_weight_file,
    check_classes,
    finetune,
    labels_from_file,
    p_good,
    split_held_out,
    usable_labels,
)
from spm_bluesky.ml.card import GATE, GENERALIST, WEIGHTS
from spm_bluesky.storage import LabelClass
from spm_bluesky.twin import TipClass
from tests.unit.test_assessor import twin_image


def frame(key: str, label: str) -> LabelledFrame:
    return LabelledFrame(key, np.zeros((8, 8), np.float32), 1e-8, label)


def test_split_keeps_both_kinds_on_both_sides_and_follows_the_seed() -> None:
    frames = [frame(f"g{i}", "good") for i in range(12)] + [
        frame(f"b{i}", "blunt" if i % 2 else "unstable") for i in range(8)]
    train, held = split_held_out(frames, 0.25, seed=1)
    assert sorted(f.key for f in train + held) == sorted(f.key for f in frames)
    assert sum(f.label == "good" for f in held) == 3 and len(held) == 5
    assert split_held_out(frames, 0.25, seed=1) == (train, held)
    assert split_held_out(frames, 0.25, seed=2) != (train, held)
    # a kind with one frame keeps it for training
    train, held = split_held_out(frames[:12] + frames[12:13], 0.5, seed=0)
    assert [f.label for f in train if f.label != "good"] == ["unstable"]


def test_split_keeps_the_crops_of_one_scan_together() -> None:
    # six scans of four crops each, and four single frames; one scan mixes its labels
    frames = [LabelledFrame(f"s{s}-t{c}", np.zeros((8, 8), np.float32), 1e-8,
                            "good" if s < 3 or (s == 5 and c == 0) else "unstable",
                            group=f"scan{s}")
              for s in range(6) for c in range(4)]
    frames += [frame(f"single{i}", "good" if i < 2 else "blunt") for i in range(4)]
    for seed in range(20):
        train, held = split_held_out(frames, 0.5, seed)
        assert sorted(f.key for f in train + held) == sorted(f.key for f in frames)
        assert not {f.scan for f in train} & {f.scan for f in held}
        # scan 5 (one good crop of four) goes with the bad scans: both kinds on both sides
        for side in (train, held):
            assert {f.label == "good" for f in side} == {True, False}
    # grouped by its own key, a frame splits as before groups existed
    alone = [frame(f.key, f.label) for f in frames]
    grouped = [LabelledFrame(f.key, f.image, f.scan_size_m, f.label, f.key) for f in alone]

    def keys(sides: tuple[list[LabelledFrame], ...]) -> list[list[str]]:
        return [[f.key for f in side] for side in sides]

    assert keys(split_held_out(grouped, 0.25, 3)) == keys(split_held_out(alone, 0.25, 3))


def test_anchor_folds_never_split_a_scan() -> None:
    good = np.array([True] * 6 + [False] * 6)
    scans = np.array([0, 0, 0, 1, 1, 2, 3, 3, 4, 4, 5, 5])
    folds = _stratified_folds(_scan_majority(good, scans), 2, seed=0)[scans]
    for scan in np.unique(scans):
        assert len(set(folds[scans == scan])) == 1
    assert set(folds[good]) == set(folds[~good]) == {0, 1}


@pytest.mark.parametrize(("labels", "message"), [
    ([], "no labelled images"),
    (["good", "good"], "all 2 labelled images are good"),
    (["blunt", "adsorbate"], "all 2 labelled images are bad"),
])
def test_fine_tuning_needs_good_and_bad_frames(labels: list[str], message: str) -> None:
    with pytest.raises(FinetuneError, match=message):
        check_classes([frame(str(i), label) for i, label in enumerate(labels)])


def test_unclear_labels_are_never_trained_on() -> None:
    labels = [FrameLabel("r", 1, LabelClass.UNCLEAR), FrameLabel("r", 2, LabelClass.BLUNT)]
    assert usable_labels(labels) == labels[1:]


def test_labels_files_json_and_csv(tmp_path: Path) -> None:
    json_file = tmp_path / "labels.json"
    json_file.write_text(json.dumps([{"run_uid": "abc", "seq_num": 2, "label": "blunt"}]))
    csv_file = tmp_path / "labels.csv"
    csv_file.write_text("run_uid,seq_num,label\nabc,2,blunt\ndef,5, good\n")
    assert labels_from_file(json_file) == [FrameLabel("abc", 2, LabelClass.BLUNT)]
    assert labels_from_file(csv_file) == [FrameLabel("abc", 2, LabelClass.BLUNT),
                                          FrameLabel("def", 5, LabelClass.GOOD)]
    bad = tmp_path / "bad.csv"
    for text, message in [("run_uid,seq_num,label\nabc,two,blunt\n", "label 1"),
                          ("run_uid,label\nabc,blunt\n", "needs run_uid, seq_num"),
                          ("run_uid,seq_num,label\nabc,1,sharp\n", "unknown label class")]:
        bad.write_text(text)
        with pytest.raises(FinetuneError, match=message):
            labels_from_file(bad)
    not_json = tmp_path / "x.json"
    not_json.write_text("{")
    with pytest.raises(FinetuneError, match="not JSON"):
        labels_from_file(not_json)


def test_a_labels_file_can_name_the_scan_of_each_image(tmp_path: Path) -> None:
    """Crops of one scan share a ``scan`` in the labels file (a name or a number); a label
    without one is its own scan; anything else is refused, naming the entry."""
    json_file = tmp_path / "labels.json"
    json_file.write_text(json.dumps([
        {"run_uid": "r", "seq_num": 1, "label": "good", "scan": "A200622.190818"},
        {"run_uid": "r", "seq_num": 2, "label": "unstable", "scan": 7},
        {"run_uid": "r", "seq_num": 3, "label": "blunt"}]))
    assert [label.scan for label in labels_from_file(json_file)] == ["A200622.190818", "7", ""]
    csv_file = tmp_path / "labels.csv"
    csv_file.write_text("run_uid,seq_num,label,scan\nr,1,good,left\nr,2,blunt,\n")
    assert [label.scan for label in labels_from_file(csv_file)] == ["left", ""]
    for scan in ([1], True, {"a": 1}):
        json_file.write_text(json.dumps([{"run_uid": "r", "seq_num": 1, "label": "good",
                                          "scan": scan}]))
        with pytest.raises(FinetuneError, match="optionally scan"):
            labels_from_file(json_file)


def test_a_fine_tune_moves_the_network_towards_its_labels() -> None:
    """Twin frames labelled against the truth (good tips called blunt and the reverse):
    the fine-tuned network must follow the labels, and the base must stay as it was."""
    good = [twin_image(400 + i, TipClass.GOOD) for i in range(4)]
    blunt = [twin_image(500 + i, TipClass.BLUNT) for i in range(4)]
    frames = ([LabelledFrame(f"g{i}", im, 10e-9, "blunt") for i, im in enumerate(good)]
              + [LabelledFrame(f"b{i}", im, 10e-9, "good") for i, im in enumerate(blunt)])
    net = base_network()
    base = TipNetAssessor(net, "base")
    before = p_good(base, frames)
    result = finetune(net, frames, FinetuneConfig(views=4, epochs=200))
    tuned = TipNetAssessor(result.model, "t")
    after = p_good(tuned, frames)
    # labels against the base: cross-validation must choose a weak pull back to it
    assert set(result.cross_validation) == set(ANCHORS)
    assert result.anchor == min(result.cross_validation, key=result.cross_validation.get)
    assert result.anchor < ANCHORS[-1]
    assert result.cross_validation[result.anchor] < result.cross_validation[ANCHORS[-1]]
    assert before[:4].mean() > 0.5 > before[4:].mean()  # the base agrees with the truth
    assert after[:4].mean() < before[:4].mean() - 0.3
    assert after[4:].mean() > before[4:].mean() + 0.3
    np.testing.assert_allclose(p_good(base, frames), before)
    np.testing.assert_allclose(p_good(TipNetAssessor(net, "again"), frames), before,
                               atol=1e-6)


def test_with_one_frame_of_a_kind_the_anchor_is_the_fallback() -> None:
    """Too few frames to cross-validate: the fallback strength, and no losses claimed."""
    frames = [LabelledFrame(f"g{i}", twin_image(600 + i, TipClass.GOOD), 10e-9, "good")
              for i in range(3)]
    frames.append(LabelledFrame("b", twin_image(700, TipClass.BLUNT), 10e-9, "blunt"))
    result = finetune(base_network(), frames, FinetuneConfig(views=2, epochs=20))
    assert (result.anchor, result.cross_validation) == (FALLBACK_ANCHOR, {})
    fixed = finetune(base_network(), frames, FinetuneConfig(views=2, epochs=20, anchor=0.5))
    assert (fixed.anchor, fixed.cross_validation) == (0.5, {})


def test_the_base_of_a_fine_tune_is_the_generalist_unless_given(tmp_path: Path) -> None:
    """By default, and for a gate file, the generalist (the network that judges unfamiliar
    instruments' frames); a weight file given is itself."""
    assert base_weight_file() == GENERALIST
    assert base_weight_file(GATE) == GENERALIST
    assert base_weight_file(WEIGHTS) == WEIGHTS
    net = base_network()
    assert net.state_dict()["head.weight"].shape == base_network(GATE).state_dict()[
        "head.weight"].shape
    assert load_network(GENERALIST).model_id == load_network(base_weight_file()).model_id
