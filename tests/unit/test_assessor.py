"""The CNN assessor: held-out metrics, API, preprocessing, provenance, plans.

The metric test renders a fresh held-out set from the ``tests`` seed range (never used in
training, validation or ``eval assessor``) and checks the assessor's goals on it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from bluesky import RunEngine
from ophyd_async.core import callback_on_mock_put, init_devices, set_mock_value

from spm_bluesky.devices.stm import STM
from spm_bluesky.domain import processing
from spm_bluesky.ml.assessor import data as ds
from spm_bluesky.ml.assessor import load_assessor
from spm_bluesky.ml.assessor.assessor import load_network, window_outputs
from spm_bluesky.ml.assessor.evaluation import evaluate_on, held_out_randomisation
from spm_bluesky.ml.assessor.metrics import GOALS, evaluate, reliability, roc_auc
from spm_bluesky.ml.card import CARD, CARD_MARKDOWN, WEIGHTS, read_card
from spm_bluesky.plans.assess import STREAM, AssessmentDevice, assess_last_image
from spm_bluesky.protocols import CLASSES, Assessment
from spm_bluesky.twin import Frame, Instrument, TipClass
from spm_bluesky.twin.tip import add_defect, good_tip

#: Held-out images for the metric test: 200 per class, about 30 s to render on one core.
N_HELD_OUT = 1000


@pytest.fixture(scope="module")
def assessor():
    return load_assessor()


def molecule_frame(instrument: Instrument, size: float, pixels: int) -> Frame:
    """The first frame on a raster that holds 3 to 12 molecules and no debris."""
    for i in range(400):
        frame = Frame(center_x=(i % 20) * 2 * size - 200e-9,
                      center_y=(i // 20) * 2 * size - 200e-9, size=size, pixels=pixels)
        half = size / 2
        patch = instrument.sample.patch(0, frame.center_x - half, frame.center_x + half,
                                        frame.center_y - half, frame.center_y + half)
        if 3 <= len(patch.centres) <= 12 and len(patch.other) == 0:
            return frame
    raise AssertionError("no molecule frame found")


def twin_image(seed: int, tip_class: TipClass, size: float = 10e-9,
               pixels: int = 64) -> np.ndarray:
    """One twin frame (m) over molecules with a fresh tip of ``tip_class``."""
    instrument = Instrument(seed)
    rng = np.random.default_rng(seed)
    tip = good_tip(rng, instrument.config.tip)
    if tip_class is not TipClass.GOOD:
        tip = add_defect(tip, tip_class, rng, instrument.config.tip)
    instrument.set_tip(tip)
    return instrument.scan(molecule_frame(instrument, size, pixels))


# -- held-out metrics --------------------------------------------------------------------


@pytest.mark.slow
def test_held_out_goals_and_the_observable_frames(assessor):
    """The assessor's goals (every metric of :data:`GOALS`) on every frame of a fresh
    held-out set, and its observable frames: a few percent of the unstable frames have no
    flip and of all frames no molecule; without them the figures are no worse (see
    docs/explanation/assessor.md). One test, so that the set is rendered and judged once
    (as a module fixture, each xdist worker that ran one of its tests did both again)."""
    held_out = ds.build(ds.TESTS, 0, N_HELD_OUT, held_out_randomisation(),
                        workers=ds.default_workers())
    assert held_out.manifest["class_counts"] == {c: N_HELD_OUT // 5 for c in CLASSES}
    result = evaluate_on(assessor, held_out)
    missed = {metric: goal for metric, goal in result.all_frames.goals().items()
              if not goal["met"]}
    assert set(result.all_frames.goals()) == set(GOALS)
    assert not missed, "".join(f"{metric} = {goal['value']:.4f}, goal {goal['goal']}\n"
                               for metric, goal in missed.items()) + result.text()

    assert 0.005 * N_HELD_OUT / 5 <= result.no_flip <= 0.12 * N_HELD_OUT / 5
    assert 0.01 * N_HELD_OUT <= result.no_molecule <= 0.08 * N_HELD_OUT
    assert result.observable.n_images == N_HELD_OUT - result.no_flip - result.no_molecule
    assert result.all_frames.n_images == N_HELD_OUT
    assert result.observable.auc_good >= result.all_frames.auc_good
    assert result.observable.accuracy_good >= result.all_frames.accuracy_good


def test_seed_ranges_are_disjoint_and_enforced():
    ranges = sorted(ds.SPLITS.values(), key=lambda r: r.start)
    for a, b in itertools.pairwise(ranges):
        assert a.stop <= b.start
    assert ds.TRAIN.seeds(3, 2) == [300_000, 300_001]
    with pytest.raises(ValueError, match="do not fit"):
        ds.TRAIN.seeds(100, 1)
    with pytest.raises(ValueError, match="do not fit"):
        ds.HELD_OUT.seeds(0, ds.IMAGES_PER_BASE + 1)


# -- the API -----------------------------------------------------------------------------


def test_assess_answers_calibrated_probabilities(assessor):
    image = twin_image(1, TipClass.GOOD)
    a = assessor.assess(image, 10e-9)
    assert isinstance(a, Assessment)
    assert set(a.probabilities) == set(CLASSES)
    assert sum(a.probabilities.values()) == pytest.approx(1.0, abs=1e-6)
    assert 0.0 <= a.p_good <= 1.0 and a.p_good == a.probabilities["good"]
    assert a.label == max(a.probabilities, key=a.probabilities.get)
    assert a.model_id == assessor.model_id


def test_assess_batch_equals_single_assessments(assessor):
    images = [twin_image(s, c) for s, c in ((2, TipClass.GOOD), (3, TipClass.BLUNT),
                                            (4, TipClass.ADSORBATE))]
    batch = assessor.assess_batch(np.stack(images), 10e-9)
    mixed = assessor.assess_batch([images[0], twin_image(5, TipClass.GOOD, 12e-9, 128)],
                                  [10e-9, 12e-9])
    assert len(batch) == 3 and len(mixed) == 2
    for image, a in zip(images, batch, strict=True):
        single = assessor.assess(image, 10e-9)
        for c in CLASSES:
            assert a.probabilities[c] == pytest.approx(single.probabilities[c], abs=1e-5)


def test_obvious_cases_are_classified(assessor):
    """A blunt tip on a molecule field is recognised; a good tip scores higher p(good)."""
    good = [assessor.assess(twin_image(s, TipClass.GOOD, 10e-9, 128), 10e-9).p_good
            for s in range(10, 16)]
    blunt = [assessor.assess(twin_image(s, TipClass.BLUNT, 10e-9, 128), 10e-9)
             for s in range(10, 16)]
    assert np.mean(good) > 0.5
    assert sum(b.label == "blunt" for b in blunt) >= 5
    assert max(b.p_good for b in blunt) < min(good)


@pytest.mark.parametrize("bad, message", [
    (np.full((64, 64), np.nan), "NaN"),
    (np.zeros((0, 0)), "empty"),
    (np.zeros((4, 64, 64)), "2-D"),
    (np.zeros(64), "2-D"),
    (np.zeros((64, 32)), "square"),
    (np.zeros((4, 4)), "8 to 1024"),
    (np.zeros((1025, 1025)), "8 to 1024"),
    (np.array([["a"] * 8] * 8), "real heights"),
    (np.linspace(0, 2.0, 64 * 64).reshape(64, 64), "metres"),
])
def test_bad_images_raise_clear_errors(assessor, bad, message):
    with pytest.raises(ValueError, match=message):
        assessor.assess(bad, 10e-9)


def test_bad_scan_sizes_and_batches_raise(assessor):
    image = twin_image(6, TipClass.GOOD)
    for size in (0.0, -1e-9, float("nan"), 1.0):
        with pytest.raises(ValueError, match="scan size"):
            assessor.assess(image, size)
    with pytest.raises(ValueError, match="no images"):
        assessor.assess_batch([], 10e-9)
    with pytest.raises(ValueError, match="use assess"):
        assessor.assess_batch(image, 10e-9)
    image[3, 5] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        assessor.assess_batch([twin_image(7, TipClass.GOOD), image], 10e-9)


# -- preprocessing -----------------------------------------------------------------------


@pytest.mark.parametrize("pixels", [8, 64, 128, 1024])
@pytest.mark.parametrize("size, windows", [(5e-9, 1), (10e-9, 1), (20e-9, 4), (150e-9, 4)])
def test_prepare_resamples_any_frame_to_network_windows(pixels, size, windows):
    rng = np.random.default_rng(pixels)
    image = 1e-7 + rng.normal(0.0, 1e-11, (pixels, pixels))
    x = processing.prepare(image, size)
    assert x.shape == (windows, processing.NETWORK_PIXELS, processing.NETWORK_PIXELS)
    assert x.dtype == np.float32
    assert np.all(np.abs(x) <= 1.5)


def test_resampling_keeps_the_picture():
    """The same place at 64, 128 and 1024 px gives nearly the same network input, and a
    plane added to a frame does not change it."""
    instrument = Instrument(8)
    instrument.set_tip(good_tip(np.random.default_rng(0), instrument.config.tip))
    frame = Frame(center_x=60e-9, center_y=-20e-9, size=9e-9)
    inputs = {}
    for pixels in (64, 128, 1024):
        image = instrument.scan(Frame(frame.center_x, frame.center_y, frame.size, pixels))
        inputs[pixels] = processing.prepare(image, frame.size)[0]
    assert np.corrcoef(inputs[64].ravel(), inputs[128].ravel())[0, 1] > 0.9
    assert np.corrcoef(inputs[128].ravel(), inputs[1024].ravel())[0, 1] > 0.9
    image = instrument.scan(Frame(frame.center_x, frame.center_y, frame.size, 128))
    yy, xx = np.mgrid[0:128, 0:128]
    tilted = image + 2e-9 * xx / 128 - 1e-9 * yy / 128
    assert np.allclose(processing.prepare(image, frame.size),
                       processing.prepare(tilted, frame.size), atol=1e-3)


def test_resample_is_exact_on_planes_and_constant_sums():
    for n_in, n_out in ((128, 64), (1024, 64), (100, 64), (8, 64), (64, 64)):
        matrix = processing._resample_matrix(n_in, n_out)
        assert np.allclose(matrix.sum(axis=1), 1.0)
        centres_in = (np.arange(n_in) + 0.5) / n_in
        centres_out = (np.arange(n_out) + 0.5) / n_out
        if n_out <= n_in:  # box averaging of a line: the line at the output centres
            exact = n_in % n_out == 0
            assert np.allclose(matrix @ centres_in, centres_out, rtol=0,
                               atol=1e-12 if exact else 0.5 / n_in)


def test_windows_cover_the_central_20_nm_at_the_network_pixel():
    image = np.arange(128 * 128, dtype=float).reshape(128, 128) * 1e-14
    windows = processing.frame_windows(image, 20e-9)  # 0.156 nm per pixel already
    assert windows.shape == (4, 64, 64)
    assert np.array_equal(windows[0], image[:64, :64])
    assert np.array_equal(windows[3], image[64:, 64:])
    big = np.zeros((1000, 1000))
    big[450:550, 450:550] = 1e-10
    centre, size = processing.central_region(big, 200e-9)
    assert centre.shape == (100, 100) and np.all(centre == 1e-10)
    assert size == pytest.approx(20e-9)
    assert processing.central_region(big, 20e-9)[0] is big


def test_batched_plane_fit_equals_the_single_one():
    rng = np.random.default_rng(0)
    stack = rng.normal(0, 2e-11, (5, 37, 37)) + 1e-7
    stack += np.linspace(0, 3e-9, 37)[None, None, :]
    stack[:, 10:15, 10:20] += 3e-10
    single = np.stack([processing.subtract_plane(image) for image in stack])
    assert np.allclose(processing.subtract_plane_batch(stack), single, rtol=0, atol=1e-18)


def test_plane_fit_of_frames_of_different_shapes_in_turn():
    # The design matrices are cached per shape: each shape must still get its own plane,
    # and a caller cannot write into the cache.
    rng = np.random.default_rng(1)
    for rows, cols in ((16, 16), (37, 37), (16, 16), (20, 31)):
        tilt = 1e-10 * (np.arange(cols)[None, :] / cols + 2 * np.arange(rows)[:, None] / rows)
        stack = tilt[None] + rng.normal(0, 1e-13, (2, rows, cols))
        flat = processing.subtract_plane_batch(stack)
        assert flat.shape == (2, rows, cols) and np.abs(flat).max() < 1e-12
    with pytest.raises(ValueError, match="read-only"):
        processing._plane_design(16, 16)[0][0, 0] = 1.0


def test_window_features_are_the_input_of_the_last_layer():
    network = load_network()
    windows = processing.prepare(Instrument(0).scan(Frame()), 10e-9)
    logits, features = window_outputs(network._net, windows)
    seen = []
    hook = network._net.head.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    with torch.inference_mode():
        again = network._net(torch.from_numpy(windows).unsqueeze(1))
    hook.remove()
    assert np.allclose(features, seen[0].numpy(), atol=1e-5)
    assert np.allclose(logits, again.numpy(), atol=1e-5)
    assert features.shape == (len(windows), network._net.head.in_features)


# -- provenance --------------------------------------------------------------------------


def test_weight_file_matches_its_card():
    """The shipped specialist (the gate's other network: tests/unit/test_gate.py)."""
    assessor = load_network()
    card = read_card()
    data = WEIGHTS.read_bytes()
    assert hashlib.sha256(data).hexdigest() == card["sha256"]
    assert len(data) == card["size_bytes"] < 10 * 2**20
    assert assessor.model_id == card["model_id"]
    assert card["sha256"].startswith(assessor.model_id.split("-")[-1])
    assert CARD.is_file() and card["sha256"] in CARD_MARKDOWN.read_text()
    assert set(card["held_out"]["metrics"]["goals"]) == set(GOALS)
    assert card["held_out"]["all_frames"]["n_images"] == sum(
        card["held_out"]["class_counts"].values())
    assert card["training"]["command"].startswith("spm-bluesky train assessor --seed")


def test_training_is_reproducible_from_its_seed(tmp_path):
    """Two tiny trainings (twin and synthetic frames) with one seed give the same bytes;
    another seed does not."""
    from spm_bluesky.ml.assessor.config import TrainConfig
    from spm_bluesky.ml.assessor.training import train

    # 160 twin frames: the unsure calibration needs more windows than the 256 features.
    config = TrainConfig(seed=7, images=160, validation_images=20, eval_images=20, epochs=1,
                         batch_size=16, workers=1, threads=1, synth_images=20,
                         synth_validation_images=10, synth_eval_images=10)
    first = train(config, tmp_path / "a.pt", data_dir=tmp_path / "sets", progress=False)
    second = train(config, tmp_path / "b.pt", data_dir=tmp_path / "sets", progress=False)
    other = train(TrainConfig(**{**config.__dict__, "seed": 8}), tmp_path / "c.pt",
                  progress=False)
    assert first.weights.read_bytes() == second.weights.read_bytes()
    assert first.model_id == second.model_id != other.model_id
    card = json.loads((tmp_path / "a.card.json").read_text())
    assert card["sha256"] == hashlib.sha256(first.weights.read_bytes()).hexdigest()
    assert (tmp_path / "A_CARD.md").is_file()
    assert load_assessor(first.weights).model_id == first.model_id
    assert "--synth-images 20" in card["training"]["command"]
    assert card["synthetic_held_out"]["good_versus_bad"]["all"]["n"] == 10


def test_the_good_weight_is_in_the_loss_and_the_command():
    """``--good-weight`` weights the good class's loss (even odds against the four bad
    classes) and the card's command reproduces it; 1 leaves the command as it was."""
    from spm_bluesky.ml.assessor.config import TrainConfig
    from spm_bluesky.ml.assessor.training import command_for, loss_for

    out = Path("/tmp/x/assessor.pt")
    assert "--good-weight 4" in command_for(TrainConfig(good_weight=4.0), out)
    assert "--good-weight" not in command_for(TrainConfig(), out)
    logits = torch.zeros(5, len(CLASSES))
    labels = torch.arange(len(CLASSES))
    logits[0, 0] = 3.0  # only the good frame is classified well
    twin = torch.zeros(5, dtype=torch.bool)
    plain = float(loss_for(TrainConfig())(logits, labels, twin))
    weighted = float(loss_for(TrainConfig(good_weight=4.0))(logits, labels, twin))
    # The well-classified good frame holds 4 of 8 weights instead of 1 of 5: lower loss.
    per_frame = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    assert plain == pytest.approx(float(per_frame.mean()))
    assert weighted == pytest.approx(float((4 * per_frame[0] + per_frame[1:].sum()) / 8))
    assert weighted < plain
    # torch's own class-weighted loss agrees (the runs before the per-frame form).
    torch_weighted = torch.nn.CrossEntropyLoss(weight=torch.tensor([4.0, 1, 1, 1, 1]))
    assert weighted == pytest.approx(float(torch_weighted(logits, labels)))


def test_the_cards_command_carries_visible_ghosts():
    """Weights trained with ``--visible-ghosts`` are regenerated by their card's command."""
    from dataclasses import replace

    from spm_bluesky.ml.assessor.config import TrainConfig
    from spm_bluesky.ml.assessor.training import command_for

    config = TrainConfig(synth_images=100)
    visible = replace(config, synth=replace(config.synth, visible_ghosts=True))
    assert command_for(visible, Path("/x.pt")).endswith(" --visible-ghosts --out /x.pt")
    assert "--visible-ghosts" not in command_for(config, Path("/x.pt"))


def test_the_good_weight_can_spare_the_twins_frames():
    """``--good-weight-on synthetic`` weights only synthetic good frames: a twin good frame
    keeps weight 1, so the twin's odds of good against double tips are as the twin has
    them; the card's command carries the option and the network's width."""
    from spm_bluesky.ml.assessor.config import GoodWeightOn, TrainConfig
    from spm_bluesky.ml.assessor.training import command_for, loss_for

    config = TrainConfig(good_weight=4.0, good_weight_on=GoodWeightOn.SYNTHETIC, width=1.5)
    command = command_for(config, Path("/tmp/x/assessor.pt"))
    assert "--good-weight 4 --good-weight-on synthetic" in command
    assert "--width 1.5" in command
    assert "--good-weight-on" not in command_for(TrainConfig(good_weight=4.0), Path("/x.pt"))
    logits = torch.zeros(4, len(CLASSES))
    logits[:, 0] = 3.0  # all four frames look good
    labels = torch.tensor([0, 0, 1, 1])  # two good frames, two double tips
    synthetic = torch.tensor([True, False, True, False])
    per_frame = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    loss = float(loss_for(config)(logits, labels, synthetic))
    # Only the synthetic good frame (index 0) is weighted 4: 4 + 1 + 1 + 1 weights.
    assert loss == pytest.approx(float((4 * per_frame[0] + per_frame[1:].sum()) / 7))
    everywhere = float(loss_for(TrainConfig(good_weight=4.0))(logits, labels, synthetic))
    assert everywhere == pytest.approx(float((4 * per_frame[:2].sum() + per_frame[2:].sum()) / 10))
    assert loss != pytest.approx(everywhere)


# -- data sets ---------------------------------------------------------------------------


def test_dataset_shards_round_trip_without_pickles(tmp_path):
    dataset = ds.build(ds.TESTS, 99, 10)
    path = ds.write(dataset, tmp_path / "set")
    manifest = json.loads((path / ds.MANIFEST).read_text())
    assert manifest["class_counts"] == {c: 2 for c in CLASSES}
    assert manifest["seeds"] == [ds.TESTS.start + 99 * ds.IMAGES_PER_BASE,
                                 ds.TESTS.start + 99 * ds.IMAGES_PER_BASE + 10]
    for shard in manifest["shards"]:
        with np.load(path / shard["file"], allow_pickle=False) as data:
            assert data["images"].dtype == np.float32
            assert data["images"].shape[1:] == (shard["pixels"], shard["pixels"])
    loaded = ds.load(path)
    assert np.array_equal(loaded.column("seed"), dataset.column("seed"))
    again = ds.build(ds.TESTS, 99, 10)
    assert all(np.array_equal(a.images, b.images)
               for a, b in zip(dataset.groups, again.groups, strict=True))


def test_labels_are_the_true_tip_class():
    for index in range(10):
        seed = ds.TESTS.seeds(98, 10)[index]
        _, scene = ds.render(seed, ds.label_for(index), ds.Randomisation())
        assert CLASSES[scene.label] == ds.label_for(index).value
        assert 5e-9 <= scene.scan_size <= 20e-9 and scene.pixels in (64, 128)


# -- metrics -----------------------------------------------------------------------------


def test_metrics_against_definitions():
    rng = np.random.default_rng(1)
    scores, positive = rng.random(200), rng.random(200) < 0.4
    pairs = [(s > t) + 0.5 * (s == t) for s in scores[positive] for t in scores[~positive]]
    assert roc_auc(scores, positive) == pytest.approx(np.mean(pairs))
    assert roc_auc(np.r_[0.5, 0.5], np.r_[True, False]) == 0.5
    perfect = reliability(np.r_[0.0, 1.0, 1.0], np.r_[0, 1, 1])
    assert perfect.ece == 0.0
    assert reliability(np.full(10, 0.8), np.r_[np.ones(5), np.zeros(5)]).ece == \
        pytest.approx(0.3)
    probabilities = np.eye(5)[[0, 1, 2, 3, 4, 0]] * 0.96 + 0.01
    report = evaluate(probabilities, np.array([0, 1, 2, 3, 4, 1]))
    assert report.confusion[1] == [1, 1, 0, 0, 0]
    assert report.recall["multi_apex"] == 0.5 and report.precision["good"] == 0.5
    assert report.balanced_accuracy == pytest.approx(0.9)


# -- Bluesky -----------------------------------------------------------------------------


def mock_stm(image: np.ndarray, size: float, tip_state: str = "good") -> STM:
    """A mock-mode STM whose scans put ``image`` in ``Scan:Image``."""
    with init_devices(mock=True):
        stm = STM("ASSESS:", sim=True)
    pixels = image.shape[0]
    for signal, value in ((stm.scan.pixels, pixels), (stm.scan.size, size),
                          (stm.scan.speed, 80e-9), (stm.scan.bias, 1.0),
                          (stm.scan.setpoint, 25e-12), (stm.sim.tip_state, tip_state),
                          (stm.sim.seed, 4)):
        set_mock_value(signal, value)
    set_mock_value(stm.scan.image, image.ravel().astype(np.float32))

    def acquire(value: int) -> None:
        set_mock_value(stm.scan.frame_counter, 1)

    callback_on_mock_put(stm.scan.acquire, acquire)
    return stm


def test_plan_emits_an_assessment_stream(assessor):
    image = twin_image(9, TipClass.ADSORBATE, 10e-9, 128)
    RE = RunEngine(call_returns_result=True)
    docs: list[tuple[str, dict]] = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    stm = mock_stm(image, 10e-9, "adsorbate")
    result = RE(assess_last_image(stm, assessor))
    expected = assessor.assess(image.astype(np.float32), 10e-9)
    assert result.plan_result.probabilities == pytest.approx(expected.probabilities)
    start = next(d for n, d in docs if n == "start")
    assert start["model_ids"] == {"assessor": assessor.model_id}
    descriptor = next(d for n, d in docs if n == "descriptor" and d["name"] == STREAM)
    event = next(d for n, d in docs if n == "event" and d["descriptor"] == descriptor["uid"])
    data = event["data"]
    for c in CLASSES:
        assert data[f"assessment-p_{c}"] == pytest.approx(expected.probabilities[c])
    assert data["assessment-label"] == expected.label
    assert data["assessment-model_id"] == assessor.model_id
    assert {d["name"] for n, d in docs if n == "descriptor"} == {STREAM, "truth"}


def test_plan_rejects_what_is_not_an_assessor(RE):
    # The RunEngine first: the mock device connects on its event loop (so the test also
    # passes alone, not only after another test made one).
    stm = mock_stm(np.zeros((64, 64)), 10e-9)
    with pytest.raises(TypeError, match="assessor"):
        RE(assess_last_image(stm, object()))
    assert isinstance(AssessmentDevice(), AssessmentDevice)


# -- command line ------------------------------------------------------------------------


def test_eval_command_writes_json_and_png(tmp_path, capsys):
    from spm_bluesky.commandline.main import main

    out_json, out_png = tmp_path / "eval.json", tmp_path / "eval.png"
    assert main(["eval", "assessor", "--images", "25", "--seed", "1", "--workers", "1",
                 "--json", str(out_json), "--png", str(out_png)]) == 0
    printed = capsys.readouterr().out
    assert "confusion matrix" in printed and "auc_good" in printed
    figures = json.loads(out_json.read_text())
    assert figures["all_frames"]["n_images"] == 25
    assert set(figures["observable"]["goals"]) == set(GOALS)
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
