"""Physical tests of the twin's images: the artefacts are measured in the pixels, not read
back from the hidden state."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from spm_bluesky.domain import processing
from spm_bluesky.twin import Frame, Instrument, TipState
from tests.twin_helpers import autocorrelation, centred_power, good, molecule_field, two_apex

FIELD = Frame(center_x=50e-9, center_y=-30e-9, size=20e-9, pixels=128)


def test_multi_apex_autocorrelation_has_side_peak_at_apex_offset():
    dx, dy = 2.2e-9, 1.0e-9
    instrument = molecule_field(seed=3)
    instrument.set_tip(two_apex(dx, dy))
    corr = autocorrelation(processing.subtract_plane(instrument.scan(FIELD)))
    instrument.set_tip(good(instrument))
    reference = autocorrelation(processing.subtract_plane(instrument.scan(FIELD)))

    centre = FIELD.pixels // 2
    px = FIELD.pixel_size
    # The side peak sits at +-(dx, dy); search a window around the expected place.
    ex, ey = centre + round(dx / px), centre + round(dy / px)
    window = corr[ey - 3:ey + 4, ex - 3:ex + 4]
    peak_y, peak_x = np.unravel_index(np.argmax(window), window.shape)
    assert abs(peak_x - 3) <= 1 and abs(peak_y - 3) <= 1, "side peak not at the apex offset"
    # It is a real peak: clearly above the single-apex image's autocorrelation there,
    # and a local maximum along the line from the centre.
    assert window.max() > reference[ey, ex] + 0.25
    mid = corr[centre + round(dy / px / 2), centre + round(dx / px / 2)]
    assert window.max() > mid


def test_blunt_tip_lowers_high_spatial_frequency_power():
    instrument = molecule_field(seed=4, white=0.0, fast_axis=0.0, line_offset=0.0)
    sharp = processing.subtract_plane(instrument.scan(FIELD))
    instrument.set_tip(replace(good(instrument), radius=1.2e-9))
    blunt = processing.subtract_plane(instrument.scan(FIELD))

    def high_band_power(image: np.ndarray) -> float:
        power = centred_power(image)
        k = np.fft.fftshift(np.fft.fftfreq(FIELD.pixels, d=FIELD.pixel_size))
        radius = np.hypot(*np.meshgrid(k, k))
        return float(power[(radius > 1 / 1.0e-9) & (radius < 1 / 0.4e-9)].sum())

    assert high_band_power(blunt) < 0.2 * high_band_power(sharp)


def test_tip_changes_produce_line_jumps_that_a_detector_finds():
    instrument = molecule_field(seed=5)
    frames = [Frame(center_x=i * 11e-9 - 200e-9) for i in range(30)]
    stable_hits = sum(len(processing.line_jumps(instrument.scan(f))) > 0 for f in frames)
    instrument.set_tip(replace(good(instrument), instability=0.05))
    unstable_hits = sum(len(processing.line_jumps(instrument.scan(f))) > 0 for f in frames)
    assert stable_hits <= 2
    assert unstable_hits >= 18


def test_spontaneous_degradation_shows_as_a_line_jump():
    instrument = molecule_field(seed=6)
    config = replace(instrument.config, tip=replace(instrument.config.tip,
                                                    mean_degrade_time=2.0))
    instrument = Instrument(6, replace(config, sample=instrument.config.sample))
    instrument.set_tip(good(instrument))
    image = instrument.scan(Frame(center_x=30e-9))  # a 16 s frame: degrades about 8 times
    assert len(processing.line_jumps(image)) >= 1


def _isolated_molecule(instrument: Instrument) -> tuple[float, float]:
    patch = instrument.sample.patch(0, -100e-9, 100e-9, -100e-9, 100e-9)
    xs, ys = patch.centres.x, patch.centres.y
    for x, y in zip(xs, ys, strict=True):
        if np.sum(np.hypot(xs - x, ys - y) < 4e-9) == 1 and abs(x) < 90e-9 and abs(y) < 90e-9:
            return float(x), float(y)
    raise AssertionError("no isolated molecule found")


def test_molecules_have_the_right_size_and_height():
    instrument = molecule_field(seed=7, coverage=0.03)
    x, y = _isolated_molecule(instrument)
    frame = Frame(center_x=x, center_y=y, size=6e-9, pixels=96)
    image = processing.flatten_lines(instrument.scan(frame))
    height = image.max() - np.median(image)
    assert 0.8e-10 <= height <= 2.2e-10, f"apparent height {height * 1e10:.2f} A"
    # Size: the extent of the part that stands out above a quarter of the height.
    mask = image - np.median(image) > 0.25 * height
    rows, cols = np.nonzero(mask)
    extent = max(np.ptp(rows), np.ptp(cols)) * frame.pixel_size
    assert 1.1e-9 <= extent <= 2.2e-9, f"extent {extent * 1e9:.2f} nm"
    # Four lobes: the centre is lower than the lobes (a cross, not a blob).
    c = frame.pixels // 2
    assert image[c - 1:c + 2, c - 1:c + 2].mean() - np.median(image) < 0.85 * height


def test_same_seed_and_place_give_the_same_image():
    frame = Frame(center_x=120e-9, center_y=-80e-9)
    first = Instrument(11).scan(frame)
    second = Instrument(11).scan(frame)
    np.testing.assert_array_equal(first, second)
    other_seed = Instrument(12).scan(frame)
    difference = processing.flatten_lines(first) - processing.flatten_lines(other_seed)
    assert np.abs(difference).max() > 20e-12


def test_the_same_place_reached_another_way_shows_the_same_surface():
    frame = Frame(center_x=-60e-9, center_y=40e-9)
    direct = Instrument(13)
    detour = Instrument(13)
    for i in range(5):
        detour.scan(Frame(center_x=i * 30e-9, center_y=-100e-9))
    detour.set_tip(direct.tip)
    a = processing.flatten_lines(direct.scan(frame))
    b = processing.flatten_lines(detour.scan(frame))
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.9


@pytest.mark.parametrize("depth", [1.0e-9, 2.5e-9])
def test_revisiting_a_spot_after_a_dip_shows_the_damage(depth):
    instrument = molecule_field(seed=8, coverage=0.0)
    frame = Frame(center_x=10e-9, center_y=10e-9, size=12e-9, pixels=64)
    tip = instrument.tip
    before = processing.flatten_lines(instrument.scan(frame))
    instrument.dip(frame.center_x, frame.center_y, depth)
    instrument.set_tip(tip)  # image with the same tip: only the sample changed
    after = processing.flatten_lines(instrument.scan(frame))
    change = after - before
    c = frame.pixels // 2
    assert change[c - 3:c + 4, c - 3:c + 4].min() < -0.1e-9, "no hole at the dip spot"
    assert np.abs(change[:8, :8]).max() < 0.05e-9, "damage should stay local"
    # Deeper dips leave bigger holes: the damaged area grows with depth.
    assert instrument.damage_area > np.pi * (2 * (0.5e-9 + 0.3 * depth)) ** 2


def test_images_are_float32_metres_for_any_size_and_pixel_count():
    instrument = Instrument(2)
    for size, pixels in [(1e-9, 8), (10e-9, 64), (37e-9, 100), (200e-9, 1024)]:
        image = instrument.scan(Frame(size=size, pixels=pixels))
        assert image.dtype == np.float32 and image.shape == (pixels, pixels)
        assert np.all(np.isfinite(image))
        assert 0 < float(np.median(image)) < 200e-9  # z piezo extension, in metres


def test_tip_state_ordering_is_irrelevant_to_determinism():
    state = TipState(radius=0.3e-9)
    a, b = Instrument(1), Instrument(1)
    a.set_tip(state)
    b.set_tip(state)
    np.testing.assert_array_equal(a.scan(Frame()), b.scan(Frame()))
