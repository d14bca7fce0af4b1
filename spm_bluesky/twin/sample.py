"""The procedurally generated sample: Ag(100) terraces, MgPc molecules, debris, damage.

Coordinates are area-local: metres from the centre of an approach area, the frame the
piezo works in. Every tile's features derive from ``(seed, area, tile index)`` only, so the
same place always renders the same, however it is reached. Damage from conditioning
actions is kept per area and never heals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from spm_bluesky.twin.config import SampleConfig

_TILE_OFFSET = 1 << 20  # keeps tile indices non-negative for SeedSequence
_MOLECULE_AREA = 2.25e-18  # m^2 covered by one MgPc


@dataclass(frozen=True)
class Features:
    """Isotropic Gaussian height features: centre (m), width sigma (m), amplitude (m)."""

    x: np.ndarray
    y: np.ndarray
    sigma: np.ndarray
    amp: np.ndarray

    @staticmethod
    def empty() -> Features:
        """No features."""
        zero = np.zeros(0)
        return Features(zero, zero, zero, zero)

    @staticmethod
    def concat(parts: list[Features]) -> Features:
        """All features of ``parts`` in one set."""
        if not parts:
            return Features.empty()
        return Features(*(np.concatenate([getattr(p, f) for p in parts])
                          for f in ("x", "y", "sigma", "amp")))

    def __len__(self) -> int:
        return len(self.x)

    def within(self, x0: float, x1: float, y0: float, y1: float) -> Features:
        """The features whose 4-sigma footprint touches the box."""
        reach = 4 * self.sigma
        keep = ((self.x + reach >= x0) & (self.x - reach <= x1)
                & (self.y + reach >= y0) & (self.y - reach <= y1))
        return Features(self.x[keep], self.y[keep], self.sigma[keep], self.amp[keep])


class FeatureKind(IntEnum):
    """How the tip images a feature: molecule lobes and centres react to an adsorbate."""

    LOBE = 0
    CENTRE = 1
    OTHER = 2  # debris, rough patches, damage: imaged the same by every tip


@dataclass(frozen=True)
class SurfacePatch:
    """The features of one region in one set, each tagged with its :class:`FeatureKind`."""

    features: Features
    kind: np.ndarray  # FeatureKind codes, one per feature

    @staticmethod
    def of(lobes: Features, centres: Features, other: Features) -> SurfacePatch:
        """A patch from its three kinds of features."""
        kind = np.repeat(np.array([FeatureKind.LOBE, FeatureKind.CENTRE, FeatureKind.OTHER],
                                  dtype=np.int8), [len(lobes), len(centres), len(other)])
        return SurfacePatch(Features.concat([lobes, centres, other]), kind)

    @staticmethod
    def concat(parts: list[SurfacePatch]) -> SurfacePatch:
        """All features of ``parts`` together."""
        return SurfacePatch(Features.concat([p.features for p in parts]),
                            np.concatenate([p.kind for p in parts]))

    def _select(self, keep: np.ndarray) -> SurfacePatch:
        f = self.features
        return SurfacePatch(Features(f.x[keep], f.y[keep], f.sigma[keep], f.amp[keep]),
                            self.kind[keep])

    def within(self, x0: float, x1: float, y0: float, y1: float) -> SurfacePatch:
        """The features whose 4-sigma footprint touches the box."""
        f = self.features
        reach = 4 * f.sigma
        return self._select((f.x + reach >= x0) & (f.x - reach <= x1)
                            & (f.y + reach >= y0) & (f.y - reach <= y1))

    def of_kind(self, kind: FeatureKind) -> Features:
        """The features of one kind."""
        return self._select(self.kind == kind).features

    @property
    def lobes(self) -> Features:
        """The four lobes of each molecule."""
        return self.of_kind(FeatureKind.LOBE)

    @property
    def centres(self) -> Features:
        """Each molecule's centre (one per molecule)."""
        return self.of_kind(FeatureKind.CENTRE)

    @property
    def other(self) -> Features:
        """Debris, rough patches and damage."""
        return self.of_kind(FeatureKind.OTHER)


@dataclass(frozen=True)
class Terraces:
    """Monatomic steps of one approach area: straight on average, with a wavy edge."""

    angle: float
    width: float
    phase: float
    wobble_amplitude: np.ndarray  # (k,) m
    wobble_wavevector: np.ndarray  # (k, 2) rad/m
    wobble_phase: np.ndarray  # (k,)
    coverage_factor: float
    tilt: tuple[float, float]

    def level(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Continuous terrace coordinate on the grid ``x`` (row) by ``y`` (column vector):
        integer crossings are step edges. Separable: sin(a + b) = sin a cos b + cos a sin b."""
        u = x * math.cos(self.angle) + y * math.sin(self.angle)
        for amplitude, (kx, ky), phase in zip(
            self.wobble_amplitude, self.wobble_wavevector, self.wobble_phase, strict=True
        ):
            a, b = kx * x + phase, ky * y
            u = u + amplitude * (np.sin(a) * np.cos(b) + np.cos(a) * np.sin(b))
        return u / self.width + self.phase


class Sample:
    """A seeded, deterministic surface with several approach areas."""

    def __init__(self, seed: int, config: SampleConfig | None = None) -> None:
        self.seed = int(seed)
        self.config = config or SampleConfig()
        self._tiles: dict[tuple[int, int, int], SurfacePatch] = {}
        self._terraces: dict[int, Terraces] = {}
        self._damage: dict[int, list[Features]] = {}
        self._damage_cache: dict[int, Features] = {}
        self._blocks: dict[tuple[int, int, int, int, int], SurfacePatch] = {}

    # -- generation -------------------------------------------------------------------

    def terraces(self, area: int) -> Terraces:
        """The step geometry of approach area ``area``."""
        if area not in self._terraces:
            rng = np.random.default_rng([self.seed, 1, area])
            width = self.config.terrace_width * float(np.exp(rng.normal(0, 0.5)))
            k = 3
            wavelength = rng.uniform(40e-9, 300e-9, k)
            direction = rng.uniform(0, 2 * np.pi, k)
            wavevector = (2 * np.pi / wavelength)[:, None] * np.stack(
                [np.cos(direction), np.sin(direction)], axis=1)
            self._terraces[area] = Terraces(
                angle=float(rng.uniform(0, np.pi)),
                width=width,
                phase=float(rng.uniform(0, 1)),
                wobble_amplitude=rng.uniform(0.05, 0.25, k) * width,
                wobble_wavevector=wavevector,
                wobble_phase=rng.uniform(0, 2 * np.pi, k),
                coverage_factor=float(rng.uniform(0.5, 1.5)),
                tilt=(float(rng.normal(0, 0.01)), float(rng.normal(0, 0.01))),
            )
        return self._terraces[area]

    def tile(self, area: int, ix: int, iy: int) -> SurfacePatch:
        """The features generated for one tile (cached; pure function of seed and index)."""
        key = (area, ix, iy)
        patch = self._tiles.get(key)
        if patch is None:
            if len(self._tiles) > 20000:
                self._tiles.clear()
            patch = self._generate_tile(area, ix, iy)
            self._tiles[key] = patch
        return patch

    def _generate_tile(self, area: int, ix: int, iy: int) -> SurfacePatch:
        cfg = self.config
        rng = np.random.default_rng([self.seed, 2, area, ix + _TILE_OFFSET, iy + _TILE_OFFSET])
        t = cfg.tile_size
        x0, y0 = ix * t, iy * t
        coverage = cfg.coverage * self.terraces(area).coverage_factor
        count = rng.poisson(coverage * t * t / _MOLECULE_AREA)
        centres = [(x0 + rng.uniform(0, t), y0 + rng.uniform(0, t), rng.uniform(0, np.pi / 2))
                   for _ in range(count)]
        if rng.random() < cfg.cluster_probability:
            cx, cy = x0 + rng.uniform(0, t), y0 + rng.uniform(0, t)
            angle = rng.uniform(0, np.pi / 2)
            pitch = 1.6e-9
            cells = [(i, j) for i in range(-1, 2) for j in range(-1, 2)]
            for index in rng.choice(len(cells), size=int(rng.integers(3, 7)), replace=False):
                i, j = cells[int(index)]
                centres.append((cx + pitch * (i * math.cos(angle) - j * math.sin(angle)),
                                cy + pitch * (i * math.sin(angle) + j * math.cos(angle)), angle))
        lobes, middles = self._molecules(centres, rng)
        other = [self._debris(x0, y0, rng), self._rough(x0, y0, rng)]
        return SurfacePatch.of(lobes, middles, Features.concat(other))

    def _molecules(self, centres: list[tuple[float, float, float]],
                   rng: np.random.Generator) -> tuple[Features, Features]:
        """Four-lobed MgPc crosses: 4 lobe Gaussians plus a weaker centre each."""
        cfg = self.config
        n = len(centres)
        if n == 0:
            return Features.empty(), Features.empty()
        arr = np.asarray(centres)
        height = rng.uniform(*cfg.molecule_height, n)
        arms = arr[:, 2:3] + np.arange(4)[None, :] * (np.pi / 2)
        lx = (arr[:, 0:1] + cfg.lobe_distance * np.cos(arms)).ravel()
        ly = (arr[:, 1:2] + cfg.lobe_distance * np.sin(arms)).ravel()
        lobes = Features(lx, ly, np.full(4 * n, cfg.lobe_sigma), np.repeat(height, 4))
        middles = Features(arr[:, 0], arr[:, 1], np.full(n, 1.4 * cfg.lobe_sigma), 0.6 * height)
        return lobes, middles

    def _debris(self, x0: float, y0: float, rng: np.random.Generator) -> Features:
        """Contamination: 1 to 3 blobs 0.6 to 3 nm tall."""
        if rng.random() >= self.config.debris_probability:
            return Features.empty()
        n = int(rng.integers(1, 4))
        t = self.config.tile_size
        return Features(x0 + rng.uniform(0, t, n), y0 + rng.uniform(0, t, n),
                        rng.uniform(0.8e-9, 3.5e-9, n), rng.uniform(0.7e-9, 3.0e-9, n))

    def _rough(self, x0: float, y0: float, rng: np.random.Generator) -> Features:
        """A rough, contaminated patch: many small bumps in a disc of 3 to 8 nm."""
        if rng.random() >= self.config.rough_probability:
            return Features.empty()
        t = self.config.tile_size
        cx, cy, radius = x0 + rng.uniform(0, t), y0 + rng.uniform(0, t), rng.uniform(3e-9, 8e-9)
        n = int(rng.integers(40, 120))
        r = radius * np.sqrt(rng.uniform(0, 1, n))
        phi = rng.uniform(0, 2 * np.pi, n)
        return Features(cx + r * np.cos(phi), cy + r * np.sin(phi),
                        rng.uniform(0.3e-9, 0.9e-9, n), rng.uniform(0.15e-9, 0.6e-9, n))

    # -- queries ----------------------------------------------------------------------

    def patch(self, area: int, x0: float, x1: float, y0: float, y1: float) -> SurfacePatch:
        """Every feature touching the box ``[x0, x1] x [y0, y1]``, damage included."""
        t = self.config.tile_size
        margin = 15e-9  # the widest feature's reach
        key = (area, math.floor((x0 - margin) / t), math.floor((x1 + margin) / t),
               math.floor((y0 - margin) / t), math.floor((y1 + margin) / t))
        block = self._blocks.get(key)
        if block is None:
            if len(self._blocks) > 4096:
                self._blocks.clear()
            parts = [self.tile(area, ix, iy) for ix in range(key[1], key[2] + 1)
                     for iy in range(key[3], key[4] + 1)]
            block = self._blocks[key] = SurfacePatch.concat(parts)
        damage = self.damage(area)
        if len(damage):
            empty = Features.empty()
            block = SurfacePatch.concat([block, SurfacePatch.of(empty, empty, damage)])
        return block.within(x0, x1, y0, y1)

    # -- damage -----------------------------------------------------------------------

    def add_damage(self, area: int, features: Features) -> None:
        """Record permanent damage (holes, piles, craters, deposits) in an area."""
        self._damage.setdefault(area, []).append(features)
        self._damage_cache.pop(area, None)

    def damage(self, area: int) -> Features:
        """All damage done to an area so far."""
        if area not in self._damage_cache:
            self._damage_cache[area] = Features.concat(self._damage.get(area, []))
        return self._damage_cache[area]
