"""Labelled synthetic frames: a surface family, a tip, instrument noise (numpy, seeded).

One frame per seed, reproducible from the seed and :class:`SynthConfig` alone. The frame
has a scan size of 4 to 50 nm and 64 to 512 px, as instruments record them; what is kept
is the part the assessor looks at in operation (the central 20 nm at most,
:func:`spm_bluesky.domain.processing.central_region`), at the instrument's pixel and at most
:data:`STORED_PIXELS` px (operation resamples to 128 px per 20 nm anyway). Heights are in
metres: the family's corrugation is drawn from 0.05 to 3 Angstrom, the noise relative to it,
so no absolute height scale tells the classes apart.

Seeds come from the twin's ranges (:data:`spm_bluesky.ml.assessor.data.SPLITS`) with their
own random stream, so a synthetic set and a twin set of the same seeds are independent.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from spm_bluesky.domain import processing
from spm_bluesky.ml.assessor import data as ds
from spm_bluesky.ml.assessor.synth import surfaces, tips
from spm_bluesky.ml.assessor.synth.config import SynthConfig
from spm_bluesky.ml.assessor.synth.noise import add_noise
from spm_bluesky.protocols import CLASSES

NM = 1e-9
#: Largest stored edge (px): the 20 nm region at the network's pixel.
STORED_PIXELS = 128
#: Largest rendered edge (px): finer instrument pixels are rendered at this one (0.1 nm
#: per pixel at 20 nm), for speed.
RENDER_PIXELS = 192
#: Smallest stored edge (px).
MIN_STORED = 16
#: The random stream of synthetic frames (the twin's is 101).
_STREAM = 707
GENERATOR = "spm_bluesky.ml.assessor.synth"
#: Changes whenever the same seed and configuration would render a different frame
#: (cached sets of another version are rendered again).
VERSION = 5
#: Families without isolated features: a ghost copy of a perfect lattice is again a perfect
#: lattice, which no one can label. Multi-apex frames draw another family.
FEATURELESS = ("lattice",)
#: Families on which an adsorbate's contrast change shows as one: molecules that a good tip
#: images bright. Pits, depressions and dark rings are what a good tip shows of vacancies,
#: of some adsorbates (CO on Cu(111)) and of the scatterers of standing waves.
ADSORBATE_SHOWS = ("molecules", "layer", "porous")
#: Families on which inverted contrast (molecules as depressions) is an adsorbate's mark. On a
#: close-packed layer or a porous network it is not: the inverted image is again a periodic
#: pattern of bright and dark, which a good tip shows of a network with dark pores or of a
#: lattice of adsorbates, so no one could label it from the frame. There an adsorbate shows
#: only as structureless blobs.
INVERSION_SHOWS = ("molecules",)
#: With :attr:`SynthConfig.visible_ghosts`, a multi-apex frame is kept only if its ghost
#: raises the autocorrelation at its shift by this much (:func:`tips.ghost_visibility`;
#: isolated features doubled by a ghost of weight 0.5 to 1 raise it by about 0.4 to 0.5).
VISIBLE_GHOST = 0.1
#: Surfaces and tips drawn for one multi-apex frame before giving up on a seed.
GHOST_ATTEMPTS = 60


@dataclass(frozen=True)
class SynthScene:
    """One frame's draws, stored beside it."""

    seed: int
    label: int
    family: int  # index in surfaces.FAMILIES
    scan_size: float  # edge of the stored region (m)
    frame_size: float  # edge of the whole frame (m)
    frame_pixels: int
    pixels: int  # stored edge (px)
    corrugation: float  # m
    noise: float  # m
    noise_families: int  # bit mask over noise.NOISE_FAMILIES
    steps: bool
    tip_changes: int


def _log_uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(math.exp(rng.uniform(math.log(bounds[0]), math.log(bounds[1]))))


def render(seed: int, label: int, config: SynthConfig) -> tuple[np.ndarray, SynthScene]:
    """One frame of class ``label`` (index in :data:`CLASSES`): (heights in m, its scene)."""
    from spm_bluesky.ml.assessor.synth.noise import NOISE_FAMILIES

    rng = np.random.default_rng([seed, _STREAM])
    frame_nm = _log_uniform(rng, config.scan_size_nm_log)
    frame_px = int(config.pixels[int(rng.integers(len(config.pixels)))])
    region_nm = min(frame_nm, processing.MAX_EXTENT / NM)
    # The instrument's pixel, capped at RENDER_PIXELS for speed.
    pixels = int(min(RENDER_PIXELS, max(MIN_STORED, round(frame_px * region_nm / frame_nm))))
    grid = surfaces.Grid(pixels, region_nm)
    name = CLASSES[label]
    families = config.families
    if name == "multi_apex":
        families = tuple(f for f in families if f not in FEATURELESS) or families
    elif name == "adsorbate":
        families = tuple(f for f in families if f in ADSORBATE_SHOWS) or families
    attempts = GHOST_ATTEMPTS if name == "multi_apex" and config.visible_ghosts else 1
    for _ in range(attempts):
        family = families[int(rng.integers(len(families)))]
        corrugation = _log_uniform(rng, config.corrugation_log)
        heights = corrugation * surfaces.draw(family, grid, rng, config.families)
        steps = (family != "terraces" and "terraces" in config.families
                 and bool(rng.random() < config.steps_probability))
        if steps:
            heights += rng.uniform(*config.step_height) * surfaces.terraces(grid, rng)
        if name == "adsorbate":
            image = tips.adsorbate(heights, grid.pixel_nm, rng,
                                   invert=family in INVERSION_SHOWS)
        elif name == "multi_apex":
            ghosts = tips.multi_apex_ghosts(heights, grid.pixel_nm, rng)
            image = ghosts.image
            if config.visible_ghosts and tips.ghost_visibility(ghosts) < VISIBLE_GHOST:
                continue  # a ghost no one could see: draw the surface and the tip again
        else:
            image = tips.TIPS[name](heights, grid.pixel_nm, rng)
        break
    else:
        raise RuntimeError(f"seed {seed}: no multi-apex frame with a visible ghost in "
                           f"{attempts} draws")
    sigma = corrugation * _log_uniform(rng, config.noise_log)
    image, drawn = add_noise(image, sigma, rng)
    changes = 0
    if name == "unstable":
        image, changes = tips.tip_changes(image, corrugation, sigma, grid.pixel_nm, rng)
    stored = min(pixels, STORED_PIXELS)
    image = processing.resample(image, stored) if stored != pixels else image
    scene = SynthScene(seed=seed, label=label, family=list(surfaces.FAMILIES).index(family),
                       scan_size=region_nm * NM, frame_size=frame_nm * NM,
                       frame_pixels=frame_px, pixels=stored, corrugation=corrugation,
                       noise=sigma,
                       noise_families=sum(1 << NOISE_FAMILIES.index(d) for d in drawn),
                       steps=steps, tip_changes=changes)
    return (image - image.mean()).astype(np.float32), scene


def _task(args: tuple[int, int, SynthConfig]) -> tuple[np.ndarray, SynthScene]:
    seed, index, config = args
    return render(seed, index % len(CLASSES), config)


def generate(split: ds.SeedRange, base: int, count: int, config: SynthConfig,
             workers: int = 1) -> Iterator[tuple[np.ndarray, SynthScene]]:
    """Render ``count`` frames of seed range ``split``, set ``base`` (balanced classes)."""
    tasks = [(seed, i, config) for i, seed in enumerate(split.seeds(base, count))]
    if workers <= 1:
        yield from map(_task, tasks)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(_task, tasks, chunksize=32)


def build(split: ds.SeedRange, base: int, count: int, config: SynthConfig | None = None,
          workers: int = 1) -> ds.Dataset:
    """A synthetic set in memory, as a :class:`~spm_bluesky.ml.assessor.data.Dataset`
    (groups by stored pixel count; columns are the :class:`SynthScene` fields)."""
    config = config or SynthConfig()
    by_pixels: dict[int, tuple[list[np.ndarray], list[SynthScene]]] = {}
    for image, scene in generate(split, base, count, config, workers):
        images, scenes = by_pixels.setdefault(scene.pixels, ([], []))
        images.append(image)
        scenes.append(scene)
    groups = [ds.ImageGroup(np.stack(by_pixels[p][0]),
                            {f.name: np.array([getattr(s, f.name) for s in by_pixels[p][1]])
                             for f in fields(SynthScene)})
              for p in sorted(by_pixels)]
    seeds = split.seeds(base, count)
    labels = np.concatenate([g.labels for g in groups]) if groups else np.zeros(0, int)
    manifest = {"format": ds.FORMAT_VERSION, "generator": GENERATOR, "split": split.name,
                "seed_range": [split.start, split.stop], "base": base, "count": count,
                "seeds": [seeds[0], seeds[-1] + 1] if seeds else [],
                "class_counts": {c: int((labels == i).sum()) for i, c in enumerate(CLASSES)},
                "synth": asdict(config), "version": VERSION}
    return ds.Dataset(groups, manifest)


def cached(split: ds.SeedRange, base: int, count: int, directory: Path | str | None,
           config: SynthConfig | None = None, workers: int = 1) -> ds.Dataset:
    """The set from ``directory/synth-<split>-b<base>-n<count>-<hash>`` (the hash of the
    configuration and :data:`VERSION`) if it is there, else render it (and write it there
    when ``directory`` is given)."""
    config = config or SynthConfig()
    if directory is None:
        return build(split, base, count, config, workers)
    key = json.dumps({"synth": asdict(config), "version": VERSION}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    path = Path(directory) / f"synth-{split.name}-b{base}-n{count}-{digest}"
    if (path / ds.MANIFEST).is_file():
        existing = json.loads((path / ds.MANIFEST).read_text())
        if existing.get("version") == VERSION and existing.get("synth") == json.loads(
                json.dumps(asdict(config))):
            return ds.load(path)
    ds.write(build(split, base, count, config, workers), path)
    return ds.load(path)
