"""Labelled images from the twin for the assessor: randomised scenes, .npz shards, a manifest.

Every image is one fresh :class:`~spm_bluesky.twin.Instrument` whose integer seed fixes
everything about it (sample, tip, randomised settings, noise), so a set is reproducible
from its seed list alone. Seeds come from disjoint ranges (:data:`SPLITS`): training,
validation (temperature scaling), held-out evaluation and the tests never share a seed.

Labels are the TRUE tip class at scan time. A frame during which the tip changed class by
itself (spontaneous degradation, about 0.1 % of frames) is dropped and another random place
scanned with the original tip: the label must hold for every line.

An unstable tip flips for a few lines at a time (0.03 to 0.06 per line), yet about one
frame in sixteen at 64 px (0.5 % at 128 px) is scanned without a single flip: the image
then shows nothing but its noise (twice the stable level in the twin, within the range
that :class:`Randomisation` gives stable tips). Training and validation sets keep an
unstable tip's frame only if it flipped (``unstable_must_flip``): the class then means
what an expert sees, streaks and flicker, not a noise level that real instruments vary
anyway. Held-out sets keep every frame and record ``tip_changes`` per frame, so the
evaluation reports both all frames and the frames whose defect is observable.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from spm_bluesky.protocols import CLASSES
from spm_bluesky.twin import Frame, Instrument, NoiseConfig, SampleConfig, TipClass, TwinConfig
from spm_bluesky.twin.config import InstrumentConfig
from spm_bluesky.twin.tip import DEFECTS, TipState, add_defect, good_tip

#: Images per ``base`` inside a seed range: image ``i`` of base ``b`` has seed
#: ``start + b * IMAGES_PER_BASE + i``.
IMAGES_PER_BASE = 100_000
MANIFEST = "manifest.json"
FORMAT_VERSION = 1
#: Images per shard file.
SHARD_SIZE = 1000
#: Frames tried for one image (tip changed class, or an unstable tip that must flip did
#: not) before giving up on a seed: P(no flip in 64 lines) <= 0.53, so 0.53^40 ~ 1e-11.
_ATTEMPTS = 40


@dataclass(frozen=True)
class SeedRange:
    """A half-open range of twin seeds reserved for one purpose."""

    name: str
    start: int
    stop: int

    def seeds(self, base: int, count: int) -> list[int]:
        """Seeds of ``count`` images of set ``base`` (0 to 99); ValueError if they do not fit."""
        first = self.start + base * IMAGES_PER_BASE
        if base < 0 or count < 0 or count > IMAGES_PER_BASE or first + count > self.stop:
            raise ValueError(f"{count} images of base {base} do not fit the {self.name} seed "
                             f"range [{self.start}, {self.stop}) ({IMAGES_PER_BASE} per base)")
        return list(range(first, first + count))


TRAIN = SeedRange("train", 0, 10_000_000)
VALIDATION = SeedRange("validation", 10_000_000, 20_000_000)
#: ``spm-bluesky eval assessor`` draws from here: never seen in training or calibration.
HELD_OUT = SeedRange("held_out", 20_000_000, 30_000_000)
#: The unit tests' held-out sets.
TESTS = SeedRange("tests", 30_000_000, 40_000_000)
SPLITS: dict[str, SeedRange] = {r.name: r for r in (TRAIN, VALIDATION, HELD_OUT, TESTS)}


@dataclass(frozen=True)
class Randomisation:
    """What varies from image to image, and how (ranges are drawn uniformly; ``*_log``
    ranges log-uniformly). Chosen wider than the twin's defaults so that the classifier
    cannot lean on one noise level, coverage or scale."""

    scan_size: tuple[float, float] = (5e-9, 20e-9)
    pixels: tuple[int, ...] = (64, 128)
    coverage_log: tuple[float, float] = (0.03, 0.25)
    cluster_probability: tuple[float, float] = (0.0, 0.5)
    debris_probability: tuple[float, float] = (0.0, 0.25)
    rough_probability: tuple[float, float] = (0.0, 0.12)
    terrace_width_log: tuple[float, float] = (15e-9, 150e-9)
    #: Apparent molecule height relative to the twin's (bias and setpoint change it).
    molecule_height_log: tuple[float, float] = (0.75, 1.35)
    #: Factor on every noise amplitude (white, fast-axis, line offsets).
    noise_log: tuple[float, float] = (0.5, 2.0)
    tilt: tuple[float, float] = (0.0, 0.03)
    drift_speed: tuple[float, float] = (0.0, 40e-12)
    feedback_frequency_log: tuple[float, float] = (80.0, 400.0)
    feedback_damping: tuple[float, float] = (0.3, 0.8)
    speed_log: tuple[float, float] = (40e-9, 200e-9)
    #: Chance that the frame is scanned soon after an approach (piezo creep, new tilt),
    #: and the settling time before it (s).
    fresh_approach_probability: float = 0.5
    settle_time_log: tuple[float, float] = (60.0, 900.0)
    #: Chance that a bad tip also has a second, lower-priority defect (as degraded tips do).
    second_defect_probability: float = 0.25
    #: Frame centres are drawn within this distance of the area centre (m).
    position_range: float = 300e-9
    #: Keep an unstable tip's frame only if the tip flipped during it (else scan another
    #: place). Training and validation: True, so the class means what an expert can see;
    #: held-out sets: False, and the frames without a flip are reported separately.
    unstable_must_flip: bool = True


@dataclass(frozen=True)
class Scene:
    """One image's draws, stored beside it (one column per field in a shard)."""

    seed: int
    label: int
    scan_size: float
    pixels: int
    coverage: float
    terrace_width: float
    debris_probability: float
    noise_scale: float
    fresh_approach: bool
    second_defect: bool
    #: Molecules and debris/rough features whose footprint touches the frame.
    molecules: int
    other_features: int
    #: Frames rescanned (the tip changed class, or an unstable tip that had to flip did not).
    rescans: int
    #: Times the tip's configuration changed during the frame (an unstable tip's flip and
    #: its return count two): 0 means no streak or flicker could show.
    tip_changes: int


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(*bounds))


def _log_uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(math.exp(rng.uniform(math.log(bounds[0]), math.log(bounds[1]))))


def label_for(index: int) -> TipClass:
    """Balanced classes: image ``index`` of a set gets class ``index mod 5``."""
    return TipClass(CLASSES[index % len(CLASSES)])


def _tip(rng: np.random.Generator, label: TipClass, config: TwinConfig,
         second_probability: float) -> tuple[TipState, bool]:
    state = good_tip(rng, config.tip)
    if label is TipClass.GOOD:
        return state, False
    state = add_defect(state, label, rng, config.tip)
    lower = DEFECTS[DEFECTS.index(label) + 1:]
    second = bool(lower) and rng.random() < second_probability
    if second:
        state = add_defect(state, lower[int(rng.integers(len(lower)))], rng, config.tip)
    if state.tip_class(config.tip) is not label:
        raise AssertionError(f"tip built for {label} is {state.tip_class(config.tip)}")
    return state, second


class _RecordingInstrument(Instrument):
    """The twin, noting how many tip configurations each frame was scanned with.

    Overrides the twin's private ``_tip_segments`` (the twin has no public record of
    flips yet); the tests would catch a change there.
    """

    segments = 1

    def _tip_segments(self, lines: int, line_time: float) -> list[tuple[int, int, TipState]]:
        segments = super()._tip_segments(lines, line_time)
        self.segments = len(segments)
        return segments


def render(seed: int, label: TipClass, rand: Randomisation) -> tuple[np.ndarray, Scene]:
    """Scan one randomised frame with a tip of class ``label``: (image in m, its scene)."""
    rng = np.random.default_rng([seed, 101])
    sample = SampleConfig(
        coverage=_log_uniform(rng, rand.coverage_log),
        cluster_probability=_uniform(rng, rand.cluster_probability),
        debris_probability=_uniform(rng, rand.debris_probability),
        rough_probability=_uniform(rng, rand.rough_probability),
        terrace_width=_log_uniform(rng, rand.terrace_width_log),
    )
    height = _log_uniform(rng, rand.molecule_height_log)
    low, high = sample.molecule_height
    sample = replace(sample, molecule_height=(low * height, high * height))
    base = NoiseConfig()
    noise_scale = _log_uniform(rng, rand.noise_log)
    noise = replace(
        base,
        white=base.white * noise_scale,
        fast_axis=base.fast_axis * noise_scale,
        line_offset=base.line_offset * noise_scale,
        tilt=_uniform(rng, rand.tilt),
        drift_speed=_uniform(rng, rand.drift_speed),
        feedback_frequency=_log_uniform(rng, rand.feedback_frequency_log),
        feedback_damping=_uniform(rng, rand.feedback_damping),
    )
    instrument_config = replace(InstrumentConfig(),
                                settle_time=_log_uniform(rng, rand.settle_time_log))
    config = TwinConfig(sample=sample, noise=noise, instrument=instrument_config)
    instrument = _RecordingInstrument(seed, config)
    fresh = bool(rng.random() < rand.fresh_approach_probability)
    if fresh:
        instrument.withdraw()
        instrument.approach()
    tip, second = _tip(rng, label, config, rand.second_defect_probability)
    size = _uniform(rng, rand.scan_size)
    pixels = int(rand.pixels[int(rng.integers(len(rand.pixels)))])
    speed = _log_uniform(rng, rand.speed_log)
    rescans = 0
    while True:
        x, y = rng.uniform(-rand.position_range, rand.position_range, 2)
        frame = Frame(center_x=float(x), center_y=float(y), size=size, pixels=pixels,
                      speed=speed)
        instrument.set_tip(tip)
        image = instrument.scan(frame)
        flipped = instrument.segments > 1
        must_flip = rand.unstable_must_flip and label is TipClass.UNSTABLE
        if instrument.tip_class is label and (flipped or not must_flip):
            break
        rescans += 1
        if rescans == _ATTEMPTS:
            raise RuntimeError(f"seed {seed}: no usable frame in {rescans} tries")
    half = size / 2
    patch = instrument.sample.patch(0, frame.center_x - half, frame.center_x + half,
                                    frame.center_y - half, frame.center_y + half)
    scene = Scene(seed=seed, label=CLASSES.index(label.value), scan_size=size, pixels=pixels,
                  coverage=sample.coverage, terrace_width=sample.terrace_width,
                  debris_probability=sample.debris_probability, noise_scale=noise_scale,
                  fresh_approach=fresh, second_defect=second, molecules=len(patch.centres),
                  other_features=len(patch.other), rescans=rescans,
                  tip_changes=instrument.segments - 1)
    return image, scene


def _render_task(args: tuple[int, int, Randomisation]) -> tuple[np.ndarray, Scene]:
    seed, index, rand = args
    return render(seed, label_for(index), rand)


@dataclass
class ImageGroup:
    """Images of one pixel count with their scenes as columns."""

    images: np.ndarray  # (n, px, px) float32, metres
    columns: dict[str, np.ndarray]

    @property
    def labels(self) -> np.ndarray:
        """Class indices in :data:`CLASSES` order."""
        return self.columns["label"]

    @property
    def scan_sizes(self) -> np.ndarray:
        """Frame edges (m)."""
        return self.columns["scan_size"]


@dataclass
class Dataset:
    """A loaded set: groups by pixel count plus its manifest."""

    groups: list[ImageGroup]
    manifest: dict

    def __len__(self) -> int:
        return sum(len(g.images) for g in self.groups)

    def column(self, name: str) -> np.ndarray:
        """One scene field over all groups, in group order."""
        return np.concatenate([g.columns[name] for g in self.groups])


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def generate(
    split: SeedRange,
    base: int,
    count: int,
    rand: Randomisation | None = None,
    workers: int = 1,
    progress: bool = False,
) -> Iterator[tuple[np.ndarray, Scene]]:
    """Render ``count`` images of seed-range ``split``, set ``base``, in seed order."""
    rand = rand or Randomisation()
    tasks = [(seed, i, rand) for i, seed in enumerate(split.seeds(base, count))]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=count, desc=f"twin images ({split.name})", unit="img")
    try:
        if workers <= 1:
            results: Iterator[tuple[np.ndarray, Scene]] = map(_render_task, tasks)
            for item in results:
                if bar is not None:
                    bar.update()
                yield item
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for item in pool.map(_render_task, tasks, chunksize=16):
                    if bar is not None:
                        bar.update()
                    yield item
    finally:
        if bar is not None:
            bar.close()


def _group(images: list[np.ndarray], scenes: list[Scene]) -> ImageGroup:
    columns = {f.name: np.array([getattr(s, f.name) for s in scenes]) for f in fields(Scene)}
    return ImageGroup(np.stack(images).astype(np.float32), columns)


def build(
    split: SeedRange,
    base: int,
    count: int,
    rand: Randomisation | None = None,
    workers: int = 1,
    progress: bool = False,
) -> Dataset:
    """Render a set in memory (see :func:`write` to keep it on disk)."""
    rand = rand or Randomisation()
    by_pixels: dict[int, tuple[list[np.ndarray], list[Scene]]] = {}
    for image, scene in generate(split, base, count, rand, workers, progress):
        images, scenes = by_pixels.setdefault(scene.pixels, ([], []))
        images.append(image)
        scenes.append(scene)
    groups = [_group(*by_pixels[p]) for p in sorted(by_pixels)]
    manifest = _manifest(split, base, count, rand, groups)
    return Dataset(groups, manifest)


def _manifest(split: SeedRange, base: int, count: int, rand: Randomisation,
              groups: list[ImageGroup]) -> dict:
    labels = np.concatenate([g.labels for g in groups]) if groups else np.zeros(0, int)
    seeds = split.seeds(base, count)
    return {
        "format": FORMAT_VERSION,
        "generator": "spm_bluesky.ml.assessor.data",
        "split": split.name,
        "seed_range": [split.start, split.stop],
        "base": base,
        "count": count,
        "seeds": [seeds[0], seeds[-1] + 1] if seeds else [],
        "labels": "true tip class at scan time; class = index mod 5 (balanced)"
                  + ("; unstable frames only where the tip flipped" if rand.unstable_must_flip
                     else "; every frame kept (see the tip_changes column)"),
        "classes": list(CLASSES),
        "class_counts": {c: int(np.sum(labels == i)) for i, c in enumerate(CLASSES)},
        "pixel_counts": {str(g.images.shape[1]): len(g.images) for g in groups},
        "rescanned_frames": int(sum(g.columns["rescans"].sum() for g in groups)),
        "randomisation": asdict(rand),
        "twin_defaults": asdict(TwinConfig()),
    }


def write(dataset: Dataset, directory: Path | str) -> Path:
    """Write ``dataset`` as ``.npz`` shards (no pickles) plus ``manifest.json``; return the dir."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    shards = []
    for group in dataset.groups:
        pixels = group.images.shape[1]
        for start in range(0, len(group.images), SHARD_SIZE):
            stop = start + SHARD_SIZE
            path = out / f"{dataset.manifest['split']}-{pixels:04d}px-{start // SHARD_SIZE:04d}.npz"
            arrays: dict[str, Any] = {"images": group.images[start:stop],
                      **{k: v[start:stop] for k, v in group.columns.items()}}
            np.savez(path, **arrays)
            shards.append({"file": path.name, "pixels": pixels,
                           "count": len(group.images[start:stop]), "sha256": _sha256(path)})
    manifest = {**dataset.manifest, "shards": shards}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def load(directory: Path | str) -> Dataset:
    """Read a set written by :func:`write`, checking every shard's sha256."""
    root = Path(directory)
    manifest = json.loads((root / MANIFEST).read_text())
    if manifest.get("format") != FORMAT_VERSION:
        raise ValueError(f"{root}: unknown dataset format {manifest.get('format')!r}")
    parts: dict[int, list[ImageGroup]] = {}
    for shard in manifest["shards"]:
        path = root / shard["file"]
        if _sha256(path) != shard["sha256"]:
            raise ValueError(f"{path}: sha256 differs from the manifest")
        with np.load(path, allow_pickle=False) as data:
            columns = {k: data[k] for k in data.files if k != "images"}
            parts.setdefault(shard["pixels"], []).append(ImageGroup(data["images"], columns))
    groups = [ImageGroup(np.concatenate([g.images for g in gs]),
                         {k: np.concatenate([g.columns[k] for g in gs]) for k in gs[0].columns})
              for _, gs in sorted(parts.items())]
    return Dataset(groups, manifest)


def default_workers() -> int:
    """Processes for rendering: at most 2 (the machine is shared), at least 1."""
    return max(1, min(2, os.cpu_count() or 1))


def subset(dataset: Dataset, keep: Sequence[bool] | np.ndarray) -> Dataset:
    """The images where ``keep`` (over :meth:`Dataset.column` order) is true."""
    mask = np.asarray(keep, dtype=bool)
    groups, start = [], 0
    for group in dataset.groups:
        part = mask[start:start + len(group.images)]
        start += len(group.images)
        if part.any():
            groups.append(ImageGroup(group.images[part],
                                     {k: v[part] for k, v in group.columns.items()}))
    return Dataset(groups, dataset.manifest)


def cached(
    split: SeedRange,
    base: int,
    count: int,
    directory: Path | str | None,
    rand: Randomisation | None = None,
    workers: int = 1,
    progress: bool = False,
) -> Dataset:
    """The set from ``directory/<split>-b<base>-n<count>`` if it was written with the same
    randomisation, else render it (and write it there when ``directory`` is given)."""
    rand = rand or Randomisation()
    if directory is None:
        return build(split, base, count, rand, workers, progress)
    path = Path(directory) / f"{split.name}-b{base}-n{count}"
    if (path / MANIFEST).is_file():
        existing = json.loads((path / MANIFEST).read_text())
        if existing.get("randomisation") == json.loads(json.dumps(asdict(rand))):
            return load(path)
    dataset = build(split, base, count, rand, workers, progress)
    write(dataset, path)
    return load(path)
