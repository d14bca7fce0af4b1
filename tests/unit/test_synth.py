"""The synthetic training frames (surface families, tip defects, instrument noise) and the
assessor's scale-free input stage."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from spm_bluesky.domain import processing
from spm_bluesky.ml.assessor import data as ds
from spm_bluesky.ml.assessor import load_assessor
from spm_bluesky.ml.assessor.assessor import TipNetAssessor, serialise
from spm_bluesky.ml.assessor.finetune import base_network
from spm_bluesky.ml.assessor.model import STAGES, TipNet, stages_for, stages_of
from spm_bluesky.ml.assessor.synth import generate as synth
from spm_bluesky.ml.assessor.synth import surfaces, tips
from spm_bluesky.ml.assessor.synth.config import FAMILY_NAMES
from spm_bluesky.ml.assessor.synth.noise import NOISE_FAMILIES, add_noise
from spm_bluesky.ml.assessor.synth.surfaces import VACANCY_BASES
from spm_bluesky.protocols import CLASSES

CONFIG = synth.SynthConfig()


@pytest.mark.parametrize("family", list(surfaces.FAMILIES))
def test_every_family_renders_a_finite_varied_surface(family):
    grid = surfaces.Grid(96, 12.0)
    heights = surfaces.FAMILIES[family](grid, np.random.default_rng(3))
    assert heights.shape == (96, 96)
    assert np.all(np.isfinite(heights))
    # Units of the corrugation: features about 1 high (steps may add a few).
    assert 0.2 < np.ptp(heights) < 8.0, family


@pytest.mark.parametrize("label", range(len(CLASSES)))
def test_frames_are_reproducible_from_their_seed(label):
    first, scene = synth.render(123 + label, label, CONFIG)
    again, scene_again = synth.render(123 + label, label, CONFIG)
    other, _ = synth.render(124 + label, label, CONFIG)
    assert np.array_equal(first, again) and scene == scene_again
    assert first.shape != other.shape or not np.array_equal(first, other)


def test_frames_cover_the_scan_sizes_pixels_and_heights_asked_for():
    scenes = [synth.render(seed, seed % 5, CONFIG)[1] for seed in range(60)]
    frame_nm = np.array([s.frame_size for s in scenes]) * 1e9
    assert frame_nm.min() >= 4.0 and frame_nm.max() <= 50.0
    assert frame_nm.max() > 25.0 and frame_nm.min() < 8.0  # the range is used
    assert {s.frame_pixels for s in scenes} <= set(CONFIG.pixels)
    assert all(synth.MIN_STORED <= s.pixels <= synth.STORED_PIXELS for s in scenes)
    assert all(s.scan_size <= processing.MAX_EXTENT + 1e-15 for s in scenes)
    corrugation = np.array([s.corrugation for s in scenes])
    assert corrugation.min() >= 0.05e-10 and corrugation.max() <= 3e-10
    assert corrugation.max() / corrugation.min() > 10  # no single height scale
    assert len({s.family for s in scenes}) == len(surfaces.FAMILIES)


def test_only_unstable_tips_change_during_the_frame():
    scenes = [synth.render(seed, seed % 5, CONFIG)[1] for seed in range(40)]
    unstable = CLASSES.index("unstable")
    assert all((s.tip_changes > 0) == (s.label == unstable) for s in scenes)


def test_ghosts_and_adsorbates_are_drawn_on_surfaces_that_can_show_them():
    """A ghost of a perfect lattice is a perfect lattice again; an adsorbate's contrast
    change is drawn only on bright molecules (a good tip shows pits and dark rings too)."""
    names = list(surfaces.FAMILIES)
    multi_apex = {synth.render(seed, CLASSES.index("multi_apex"), CONFIG)[1].family
                  for seed in range(40)}
    assert names.index("lattice") not in multi_apex and len(multi_apex) > 3
    adsorbate = {names[synth.render(seed, CLASSES.index("adsorbate"), CONFIG)[1].family]
                 for seed in range(40)}
    assert adsorbate == set(synth.ADSORBATE_SHOWS)
    assert any(synth.render(seed, 0, CONFIG)[1].family == names.index("lattice")
               for seed in range(40))


def test_contrast_is_inverted_only_on_isolated_molecules():
    """An inverted close-packed layer or porous network is again a pattern a good tip shows:
    there an adsorbate's frame keeps the good frame's sign (blobs, no depressions), while on
    isolated molecules some frames turn the molecules into depressions."""
    grid = surfaces.Grid(64, 10.0)
    signs: dict[bool, list[float]] = {True: [], False: []}
    for seed in range(30):
        heights = surfaces.FAMILIES["molecules"](grid, np.random.default_rng(seed))
        if np.ptp(heights) == 0:  # no molecule landed in this frame
            continue
        for invert in (True, False):
            image = tips.adsorbate(heights, grid.pixel_nm, np.random.default_rng([seed, 1]),
                                   invert=invert)
            signs[invert].append(float(np.corrcoef(image.ravel(), heights.ravel())[0, 1]))
    assert len(signs[False]) >= 15 and min(signs[False]) > 0.3
    assert sum(c < -0.3 for c in signs[True]) >= 5
    assert synth.INVERSION_SHOWS == ("molecules",)


def test_tip_changes_show_as_line_jumps():
    """An unstable tip's frames have more abrupt line jumps than a good tip's, same seeds."""
    good = unstable = 0
    for seed in range(20):
        good += len(processing.line_jumps(synth.render(seed, 0, CONFIG)[0]))
        unstable += len(processing.line_jumps(synth.render(seed, 4, CONFIG)[0]))
    assert unstable > 2 * good + 10


def test_blunt_tip_removes_detail_and_ghosts_add_features():
    grid = surfaces.Grid(128, 10.0)
    x, y = grid.coords()
    heights = sum(np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * 0.25**2))
                  for cx, cy in [(2, 2), (2, 7), (7, 3), (6, 7)])
    sharp = tips.good(heights, grid.pixel_nm, np.random.default_rng(1))
    broad = tips.blunt(heights, grid.pixel_nm, np.random.default_rng(1))
    assert np.abs(np.diff(broad, axis=1)).mean() < 0.6 * np.abs(np.diff(sharp, axis=1)).mean()
    double = tips.multi_apex(heights, grid.pixel_nm, np.random.default_rng(2))
    assert (double > 0.3).mean() > (sharp > 0.3).mean()  # each molecule seen twice


def test_ghost_visibility_sees_doubled_features_and_not_a_shifted_lattice():
    """Isolated molecules seen twice raise the autocorrelation at the ghost's shift; a
    ghost of a one-wave lattice is the same lattice again, and one closer than the
    features' own size barely changes the image: neither shows."""
    grid = surfaces.Grid(128, 10.0)
    x, y = grid.coords()
    rng = np.random.default_rng(5)
    centres = rng.uniform(1.0, 9.0, (12, 2))
    molecules = sum(np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * 0.25**2))
                    for cx, cy in centres)
    shift = (0.0, 1.5 / grid.pixel_nm)  # 1.5 nm, six times the molecules' width
    doubled = molecules + 0.8 * tips.shift_image(molecules, shift, order=1, mode="nearest")
    assert tips.ghost_visibility(tips.Ghosts(doubled, molecules, (shift,))) > 0.3
    lattice = np.cos(2 * np.pi * x / 0.7)
    ghosted = lattice + 0.8 * tips.shift_image(lattice, shift, order=1, mode="nearest")
    assert abs(tips.ghost_visibility(tips.Ghosts(ghosted, lattice, (shift,)))) < 0.05
    close = (0.0, 0.05 / grid.pixel_nm)  # a fifth of a molecule's width
    smeared = molecules + 0.8 * tips.shift_image(molecules, close, order=1, mode="nearest")
    assert tips.ghost_visibility(tips.Ghosts(smeared, molecules, (close,))) < synth.VISIBLE_GHOST


def test_visible_ghosts_keeps_only_multi_apex_frames_whose_ghost_shows(monkeypatch):
    """With ``visible_ghosts`` every multi-apex frame's ghost shows; without it about half do
    not (the shipped weights' data, rendered as before); other classes are unchanged."""
    visible = replace(CONFIG, visible_ghosts=True)
    kept: list[float] = []
    drawn = tips.multi_apex_ghosts

    def recording(*args):
        ghosts = drawn(*args)
        kept.append(tips.ghost_visibility(ghosts))
        return ghosts

    monkeypatch.setattr(tips, "multi_apex_ghosts", recording)
    multi_apex = CLASSES.index("multi_apex")
    plain = []
    for seed in range(30):
        kept.clear()
        synth.render(seed, multi_apex, CONFIG)
        plain.append(kept[-1])
        kept.clear()
        synth.render(seed, multi_apex, visible)
        assert kept[-1] >= synth.VISIBLE_GHOST, seed
        assert all(v < synth.VISIBLE_GHOST for v in kept[:-1])  # drawn again only if hidden
    assert 0.2 < np.mean(np.array(plain) < synth.VISIBLE_GHOST) < 0.8
    for label in set(range(len(CLASSES))) - {multi_apex}:
        assert np.array_equal(synth.render(7, label, CONFIG)[0],
                              synth.render(7, label, visible)[0])


def test_noise_families_are_scaled_to_the_level_asked_for():
    rng = np.random.default_rng(0)
    for _ in range(10):
        noisy, drawn = add_noise(np.zeros((64, 64)), 1e-12, rng)
        assert set(drawn) <= set(NOISE_FAMILIES) and "white" in drawn
        assert 0.1e-12 < np.median(np.abs(noisy - np.median(noisy))) < 10e-12


def test_a_family_can_be_left_out_and_unknown_ones_are_refused():
    without = CONFIG.without("porous")
    assert "porous" not in without.families
    scenes = [synth.render(seed, 0, without)[1] for seed in range(40)]
    assert surfaces.FAMILIES.__len__() - 1 == len({s.family for s in scenes})
    assert list(surfaces.FAMILIES).index("porous") not in {s.family for s in scenes}
    with pytest.raises(ValueError, match="unknown or no surface families"):
        replace(CONFIG, families=("porous", "cheese"))


@pytest.mark.parametrize("family", VACANCY_BASES)
def test_a_family_left_out_is_not_drawn_inside_another(monkeypatch, family):
    """The vacancy family cuts its pits into a lattice or a layer: left out of training, a
    family must not come back that way (the leave-one-out experiment would see it)."""
    drawn: list[str] = []
    inner = getattr(surfaces, family)

    def counted(grid, rng):
        drawn.append(family)
        return inner(grid, rng)

    monkeypatch.setattr(surfaces, family, counted)  # what vacancies() calls
    grid = surfaces.Grid(48, 8.0)
    for config, expected in ((CONFIG, True), (CONFIG.without(family), False)):
        drawn.clear()
        for seed in range(12):
            surfaces.draw("vacancies", grid, np.random.default_rng(seed), config.families)
        assert bool(drawn) is expected
    # With every family, draw() gives the vacancy family's own frames (both bases).
    for seed in range(6):
        assert np.array_equal(surfaces.draw("vacancies", grid, np.random.default_rng(seed)),
                              surfaces.vacancies(grid, np.random.default_rng(seed)))
    flats = [surfaces.vacancies(grid, np.random.default_rng(seed), bases=()) for seed in range(6)]
    assert max(f.max() for f in flats) < 1e-9 < max(np.ptp(f) for f in flats)  # pits, no base


def test_synthetic_sets_are_balanced_and_round_trip(tmp_path):
    dataset = synth.cached(ds.TESTS, 0, 10, tmp_path)
    assert len(dataset) == 10
    assert len(list(tmp_path.glob("synth-tests-b0-n10-*"))) == 1
    assert np.array_equal(np.sort(dataset.column("label")), np.repeat(np.arange(5), 2))
    again = synth.cached(ds.TESTS, 0, 10, tmp_path)  # read back, sha256 checked
    assert all(np.array_equal(a.images, b.images) for a, b in zip(dataset.groups, again.groups,
                                                                   strict=True))


def test_robust_input_stage_ignores_the_height_scale():
    torch.manual_seed(0)
    net = TipNet(robust=True).eval()
    x = torch.from_numpy(processing.prepare(synth.render(7, 0, CONFIG)[0], 10e-9)[None])
    # DeepSPM's input is h / 1 A - 1: a 3x taller, shifted image is an affine change of it.
    taller = 3 * (x + 1) - 1 + 0.2
    with torch.inference_mode():
        assert torch.allclose(net(x), net(taller), atol=1e-4)
        legacy = TipNet(robust=True).eval()  # built with the stage: the weights decide
        legacy.load_state_dict({k: v for k, v in net.state_dict().items()
                                if not k.endswith("robust_on")})
        assert not legacy.features[0].robust
        assert not torch.allclose(legacy(x), legacy(taller), atol=1e-2)


def test_family_names_match_the_families():
    assert tuple(surfaces.FAMILIES) == FAMILY_NAMES


def test_the_weights_say_whether_the_input_is_rescaled():
    """A plain network's state_dict has exactly the keys it had before the rescaling stage
    existed (so training without it writes the same files); a rescaled one carries its
    marker, and either loads into a network built either way."""
    plain, rescaled = TipNet().state_dict(), TipNet(robust=True).state_dict()
    assert set(rescaled) - set(plain) == {"features.0.robust_on"}
    assert not any("robust" in key for key in plain)
    for state, robust in ((plain, False), (rescaled, True)):
        for built in (False, True):
            net = TipNet(robust=built)
            net.load_state_dict(state)
            assert net.features[0].robust is robust
            assert set(net.state_dict()) == set(state)


@pytest.mark.parametrize("width, robust", [(1.0, False), (1.5, True), (0.5, False)])
def test_a_weight_file_of_any_width_loads_as_trained(tmp_path, width, robust):
    """The widths are read off the weights' shapes: a wider (or narrower) network's file
    loads through ``load_assessor`` and the fine-tune's ``base_network`` with the very
    outputs it was saved with, and the default width is the shipped network's."""
    torch.manual_seed(1)
    stages = stages_for(width)
    net = TipNet(stages, robust=robust).eval()
    assert stages_of(net.state_dict()) == stages
    path = tmp_path / "assessor.pt"
    path.write_bytes(serialise(net))
    frame = synth.render(3, 0, CONFIG)[0]
    expected = TipNetAssessor(net, "in-memory").assess(frame, 10e-9).probabilities
    loaded = load_assessor(path, calibrated=False)
    assert loaded.assess(frame, 10e-9).probabilities == pytest.approx(expected, abs=1e-6)
    base = base_network(path)
    assert stages_of(base.state_dict()) == stages and base.features[0].robust is robust
    x = torch.from_numpy(processing.prepare(frame, 10e-9)[None])
    with torch.inference_mode():
        torch.testing.assert_close(base.eval()(x), net(x))
    assert stages_for(1.0) == STAGES
    with pytest.raises(ValueError, match="width must be positive"):
        stages_for(0)
    with pytest.raises(ValueError, match="not a TipNet state"):
        stages_of({"head.weight": torch.zeros(5, 4)})
