"""Surface families for the synthetic training images: true topographies (numpy, seeded).

Each family is a function ``(grid, rng) -> heights`` whose heights are in units of the
family's corrugation (about 0 to 1; the caller scales them to 0.05 to 3 Angstrom), on a
:class:`Grid` of ``n`` pixels over ``size_nm``. They cover what real STM frames show and the
twin does not: molecules of several shapes and sizes, close-packed layers, porous
networks, atomic lattices and reconstructions, bare terraces with steps, adatoms,
vacancies and standing waves. Molecules and adatoms are stamped by FFT convolution of a
point pattern with one rendered shape, so a dense layer costs no more than a sparse one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from dataclasses import dataclass

import numpy as np
from scipy.signal import fftconvolve
from scipy.spatial import cKDTree

from spm_bluesky.ml.assessor.synth.config import FAMILY_NAMES

#: The surfaces :func:`vacancies` cuts its pits into, themselves families.
VACANCY_BASES = ("lattice", "layer")


@dataclass(frozen=True)
class Grid:
    """A square frame: ``n`` pixels per edge covering ``size_nm``."""

    n: int
    size_nm: float

    @property
    def pixel_nm(self) -> float:
        """Edge of one pixel (nm)."""
        return self.size_nm / self.n

    def coords(self) -> tuple[np.ndarray, np.ndarray]:
        """Pixel-centre coordinates ``(x, y)`` in nm, each ``(n, n)``."""
        axis = (np.arange(self.n) + 0.5) * self.pixel_nm
        return np.meshgrid(axis, axis)


def _shape(rng: np.random.Generator, size_nm: float, pixel_nm: float,
           angle: float) -> np.ndarray:
    """One molecule's stamp: 1 to 6 Gaussian lobes on a ring (a cross, a rod, a triangle,
    a disc...), optionally with a centre, rotated by ``angle``; peak height 1."""
    lobes = int(rng.choice([1, 2, 3, 4, 6]))
    radius = 0.0 if lobes == 1 else size_nm * rng.uniform(0.25, 0.45)
    width = size_nm * (rng.uniform(0.25, 0.45) if lobes == 1 else rng.uniform(0.1, 0.2))
    half = math.ceil((radius + 3 * width) / pixel_nm)
    axis = np.arange(-half, half + 1) * pixel_nm
    xx, yy = np.meshgrid(axis, axis)
    stamp = np.zeros_like(xx)
    centre_gain = rng.uniform(0.0, 0.8) if lobes > 1 else 0.0
    for k in range(lobes):
        phi = angle + 2 * math.pi * k / lobes
        cx, cy = radius * math.cos(phi), radius * math.sin(phi)
        stamp += np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * width**2))
    stamp += centre_gain * np.exp(-(xx**2 + yy**2) / (2 * (1.5 * width) ** 2))
    return stamp / stamp.max()


def _stamp(grid: Grid, points: np.ndarray, stamp: np.ndarray,
           heights: np.ndarray | None = None) -> np.ndarray:
    """Sum of ``stamp`` placed at ``points`` (nm, ``(k, 2)``), weighted by ``heights``."""
    deltas = np.zeros((grid.n, grid.n))
    index = np.floor(points / grid.pixel_nm).astype(int)
    inside = np.all((index >= 0) & (index < grid.n), axis=1)
    weights = np.ones(len(points)) if heights is None else heights
    np.add.at(deltas, (index[inside, 1], index[inside, 0]), weights[inside])
    if not deltas.any():
        return deltas
    return fftconvolve(deltas, stamp, mode="same")


def _random_points(grid: Grid, rng: np.random.Generator, count: int,
                   margin_nm: float) -> np.ndarray:
    return rng.uniform(-margin_nm, grid.size_nm + margin_nm, (count, 2))


def _lattice_points(grid: Grid, rng: np.random.Generator, a_nm: float, hexagonal: bool,
                    margin_nm: float) -> np.ndarray:
    """Points of a randomly rotated and shifted square or hexagonal lattice over the frame."""
    angle = rng.uniform(0, math.pi)
    b_angle = angle + (math.pi / 3 if hexagonal else math.pi / 2)
    a1 = a_nm * np.array([math.cos(angle), math.sin(angle)])
    a2 = a_nm * np.array([math.cos(b_angle), math.sin(b_angle)])
    reach = math.ceil((grid.size_nm * 1.5 + 2 * margin_nm) / a_nm) + 2
    i, j = np.meshgrid(np.arange(-reach, reach + 1), np.arange(-reach, reach + 1))
    centre = grid.size_nm / 2 + rng.uniform(0, a_nm, 2)
    points = centre + i.ravel()[:, None] * a1 + j.ravel()[:, None] * a2
    lo, hi = -margin_nm, grid.size_nm + margin_nm
    keep = np.all((points >= lo) & (points <= hi), axis=1)
    return points[keep]


def _wave_lattice(grid: Grid, rng: np.random.Generator, a_nm: float,
                  hexagonal: bool) -> np.ndarray:
    """A cosine lattice (atomic corrugation): sum of plane waves, range about 0 to 1."""
    x, y = grid.coords()
    angle = rng.uniform(0, math.pi)
    directions = 3 if hexagonal else 2
    step = 2 * math.pi / 3 if hexagonal else math.pi / 2
    k = 2 * math.pi / a_nm * (2 / math.sqrt(3) if hexagonal else 1.0)
    field = np.zeros_like(x)
    for d in range(directions):
        phi = angle + d * step
        field += np.cos(k * (x * math.cos(phi) + y * math.sin(phi)) + rng.uniform(0, 2 * math.pi))
    field -= field.min()
    return field / max(float(field.max()), 1e-12)


def molecules(grid: Grid, rng: np.random.Generator) -> np.ndarray:
    """Sparse molecules (or clusters) of one to three shapes and 0.6 to 3 nm, 1 to 25 % cover."""
    size = rng.uniform(0.6, 3.0)
    coverage = math.exp(rng.uniform(math.log(0.01), math.log(0.25)))
    count = max(1, round(coverage * grid.size_nm**2 / size**2))
    heights = np.zeros((grid.n, grid.n))
    kinds = int(rng.integers(1, 4))
    for part in np.array_split(_random_points(grid, rng, count, size), kinds):
        stamp = _shape(rng, size * rng.uniform(0.7, 1.3), grid.pixel_nm, rng.uniform(0, math.pi))
        heights += _stamp(grid, part, stamp, rng.uniform(0.7, 1.0, len(part)))
    return np.minimum(heights, 1.5)


def layer(grid: Grid, rng: np.random.Generator) -> np.ndarray:
    """A close-packed molecular layer: one shape on a square or hexagonal lattice, with a
    few vacancies and optionally a second domain."""
    size = rng.uniform(0.6, 2.5)
    stamp = _shape(rng, size, grid.pixel_nm, rng.uniform(0, math.pi))
    points = _lattice_points(grid, rng, size * rng.uniform(1.0, 1.4), bool(rng.random() < 0.5),
                             size)
    points = points[rng.random(len(points)) > rng.uniform(0.0, 0.05)]
    heights = _stamp(grid, points, stamp)
    if rng.random() < 0.3:  # a second rotational domain beyond a random line
        other = _stamp(grid, _lattice_points(grid, rng, size * rng.uniform(1.0, 1.4),
                                             bool(rng.random() < 0.5), size), stamp)
        x, y = grid.coords()
        phi = rng.uniform(0, 2 * math.pi)
        side = (x - grid.size_nm / 2) * math.cos(phi) + (y - grid.size_nm / 2) * math.sin(phi)
        heights = np.where(side > rng.uniform(-0.3, 0.3) * grid.size_nm, other, heights)
    return heights / max(float(heights.max()), 1e-12)


def porous(grid: Grid, rng: np.random.Generator) -> np.ndarray:
    """A porous network: bright walls around dark pores on a hexagonal or square lattice
    (metal-organic and hydrogen-bonded networks, 1 to 4 nm pores)."""
    pitch = rng.uniform(1.0, 4.0)
    hexagonal = bool(rng.random() < 0.7)
    pores = _lattice_points(grid, rng, pitch, hexagonal, pitch)
    x, y = grid.coords()
    flat = np.stack([x.ravel(), y.ravel()], axis=1)
    distance, _ = cKDTree(pores).query(flat, k=2)
    wall = (distance[:, 1] - distance[:, 0]).reshape(grid.n, grid.n)
    width = pitch * rng.uniform(0.08, 0.2)
    heights = np.exp(-(wall**2) / (2 * width**2))
    if rng.random() < 0.5:  # guests in some pores
        guests = pores[rng.random(len(pores)) < rng.uniform(0.05, 0.4)]
        stamp = _shape(rng, pitch * 0.5, grid.pixel_nm, 0.0)
        heights += rng.uniform(0.3, 1.0) * _stamp(grid, guests, stamp)
    return heights / max(float(heights.max()), 1e-12)


def lattice(grid: Grid, rng: np.random.Generator) -> np.ndarray:
    """An atomic lattice (0.25 to 0.5 nm) with, often, a reconstruction or moire: a longer
    period modulation (1.5 to 8 nm) or herringbone-like stripes."""
    a = rng.uniform(0.25, 0.5)
    heights = _wave_lattice(grid, rng, a, bool(rng.random() < 0.6))
    if rng.random() < 0.6:
        weight = rng.uniform(0.3, 2.0)
        if rng.random() < 0.5:
            super_ = _wave_lattice(grid, rng, rng.uniform(1.5, 8.0), bool(rng.random() < 0.6))
        else:
            x, y = grid.coords()
            period = rng.uniform(2.0, 7.0)
            phi = rng.uniform(0, math.pi)
            zig = np.sin(2 * math.pi * (x * math.cos(phi) + y * math.sin(phi)) / period
                         + 0.5 * np.sign(np.sin(2 * math.pi * y / rng.uniform(8, 20))))
            super_ = (zig + 1) / 2
        heights = (heights + weight * super_) / (1 + weight)
    return heights


def terraces(grid: Grid, rng: np.random.Generator) -> np.ndarray:
    """Bare terraces: 0 to 4 monatomic steps (straight or meandering) and a few defects."""
    x, y = grid.coords()
    phi = rng.uniform(0, 2 * math.pi)
    along = x * math.cos(phi) + y * math.sin(phi)
    across = -x * math.sin(phi) + y * math.cos(phi)
    meander = rng.uniform(0, 2.0) * np.sin(2 * math.pi * across / rng.uniform(5, 40)
                                           + rng.uniform(0, 2 * math.pi))
    steps = int(rng.integers(0, 5))
    edges = np.sort(rng.uniform(along.min(), along.max(), steps))
    heights = np.zeros_like(x)
    for edge in edges:
        heights += 1.0 / (1.0 + np.exp(-(along + meander - edge) / rng.uniform(0.1, 0.3)))
    bumps = int(rng.integers(1, 12))
    stamp = _shape(rng, rng.uniform(0.4, 1.2), grid.pixel_nm, 0.0)
    heights += rng.uniform(0.1, 0.5) * _stamp(grid, _random_points(grid, rng, bumps, 0),
                                              stamp, rng.choice([-1.0, 1.0], bumps))
    return heights


def adatoms(grid: Grid, rng: np.random.Generator) -> np.ndarray:
    """Adatoms or small adsorbates: round bumps (or depressions) 0.3 to 1 nm, sparse or
    crowded, on a flat terrace or a weak atomic lattice."""
    size = rng.uniform(0.3, 1.0)
    count = max(1, round(math.exp(rng.uniform(math.log(0.005), math.log(0.15)))
                         * grid.size_nm**2 / size**2))
    half = math.ceil(1.5 * size / grid.pixel_nm)
    axis = np.arange(-half, half + 1) * grid.pixel_nm
    xx, yy = np.meshgrid(axis, axis)
    stamp = np.exp(-(xx**2 + yy**2) / (2 * (size / 2.5) ** 2))
    heights = _stamp(grid, _random_points(grid, rng, count, size), stamp,
                     rng.uniform(0.6, 1.0, count))
    if rng.random() < 0.3:  # imaged as depressions (CO on Cu(111), some metal tips)
        heights = -heights
    if rng.random() < 0.4:
        heights += rng.uniform(0.02, 0.15) * _wave_lattice(grid, rng, rng.uniform(0.25, 0.45),
                                                           bool(rng.random() < 0.5))
    return np.minimum(heights, 1.5)


def vacancies(grid: Grid, rng: np.random.Generator,
              bases: Collection[str] = VACANCY_BASES) -> np.ndarray:
    """An atomic lattice or a molecular layer with vacancies and vacancy islands (dark pits).

    Only the families named in ``bases`` are drawn as the surface the pits are cut into, so
    that a family left out of training (:meth:`.config.SynthConfig.without`) does not come
    back under the vacancies; with neither, the pits are in a flat terrace. With both, the
    frame of a seed is what it always was.
    """
    on_lattice = rng.random() < 0.5
    if "lattice" in bases and (on_lattice or "layer" not in bases):
        base = lattice(grid, rng)
    elif "layer" in bases:
        base = layer(grid, rng)
    else:
        base = np.zeros((grid.n, grid.n))
    size = rng.uniform(0.3, 2.0)
    count = max(1, round(math.exp(rng.uniform(math.log(0.005), math.log(0.08)))
                         * grid.size_nm**2 / size**2))
    half = math.ceil(1.5 * size / grid.pixel_nm)
    axis = np.arange(-half, half + 1) * grid.pixel_nm
    xx, yy = np.meshgrid(axis, axis)
    pit = np.exp(-(xx**2 + yy**2) / (2 * (size / 2.5) ** 2))
    depth = _stamp(grid, _random_points(grid, rng, count, size), pit)
    return base - rng.uniform(0.5, 1.2) * np.minimum(depth, 1.0)


def waves(grid: Grid, rng: np.random.Generator) -> np.ndarray:
    """Standing waves of a surface state: ``cos(2 k r + phase) / sqrt(r)`` around point
    scatterers and ``cos(2 k d)`` decaying from a step edge (wavelength 1 to 8 nm)."""
    x, y = grid.coords()
    wavelength = rng.uniform(1.0, 8.0)
    k2 = 4 * math.pi / wavelength
    heights = np.zeros_like(x)
    behind = np.zeros(x.shape, dtype=bool)
    scatterers = _random_points(grid, rng, int(rng.integers(1, 15)), 0)
    for sx, sy in scatterers:
        r = np.hypot(x - sx, y - sy) + 0.3
        heights += np.cos(k2 * r + rng.uniform(0, math.pi)) / np.sqrt(r)
        # The scatterer itself: an adatom (bright) or a vacancy or CO on Cu(111) (dark).
        heights += 3.0 * rng.choice([-1.0, 1.0]) * np.exp(-(r**2) / (2 * 0.3**2))
    if rng.random() < 0.5:
        phi = rng.uniform(0, 2 * math.pi)
        d = (x - grid.size_nm / 2) * math.cos(phi) + (y - grid.size_nm / 2) * math.sin(phi)
        behind = d < 0
        heights += np.where(behind, 0.0, np.cos(k2 * d) * np.exp(-d / rng.uniform(5, 30)))
    heights -= np.quantile(heights, 0.01)
    heights /= max(float(np.quantile(heights, 0.99)), 1e-12)
    if rng.random() < 0.5:  # the upper terrace of the step the waves come from
        heights += 2.0 * behind
    return heights


def draw(family: str, grid: Grid, rng: np.random.Generator,
         families: Collection[str] = FAMILY_NAMES) -> np.ndarray:
    """A surface of ``family`` whose parts come only from ``families`` (the families a
    configuration draws from): the vacancy family's lattice or layer is one of them."""
    if family == "vacancies":
        return vacancies(grid, rng, bases=families)
    return FAMILIES[family](grid, rng)


#: Each family by name, in :data:`.config.FAMILY_NAMES` order.
FAMILIES: dict[str, Callable[[Grid, np.random.Generator], np.ndarray]] = {
    "molecules": molecules,
    "layer": layer,
    "porous": porous,
    "lattice": lattice,
    "terraces": terraces,
    "adatoms": adatoms,
    "vacancies": vacancies,
    "waves": waves,
}
