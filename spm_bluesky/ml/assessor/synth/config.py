"""What the synthetic frames vary, and the surface families' names (light: no scipy, so the
command line and the training configuration load fast)."""

from __future__ import annotations

from dataclasses import dataclass, replace

ANGSTROM = 1e-10
#: The surface families, in :data:`.surfaces.FAMILIES` order (a family's index is stored).
FAMILY_NAMES: tuple[str, ...] = ("molecules", "layer", "porous", "lattice", "terraces",
                                 "adatoms", "vacancies", "waves")


@dataclass(frozen=True)
class SynthConfig:
    """What varies from frame to frame (``*_log`` ranges drawn log-uniformly)."""

    scan_size_nm_log: tuple[float, float] = (4.0, 50.0)
    pixels: tuple[int, ...] = (64, 96, 128, 192, 256, 384, 512)
    corrugation_log: tuple[float, float] = (0.05 * ANGSTROM, 3.0 * ANGSTROM)
    #: Total noise level relative to the corrugation.
    noise_log: tuple[float, float] = (0.003, 0.25)
    #: Chance of monatomic steps under a family that has none of its own.
    steps_probability: float = 0.25
    step_height: tuple[float, float] = (1.0 * ANGSTROM, 2.5 * ANGSTROM)
    #: Surface families drawn from (uniformly): all of :data:`FAMILY_NAMES` by default.
    families: tuple[str, ...] = FAMILY_NAMES
    #: Keep a multi-apex frame only if its ghost shows (the surface and the tip are drawn
    #: again until it does; :data:`.generate.VISIBLE_GHOST`). Off: a ghost of a periodic
    #: pattern, or one closer than the features' size, is labelled multi_apex all the same,
    #: though the frame is one a good tip could give.
    visible_ghosts: bool = False

    def __post_init__(self) -> None:
        unknown = set(self.families) - set(FAMILY_NAMES)
        if unknown or not self.families:
            raise ValueError(f"unknown or no surface families {sorted(unknown)}; known: "
                             f"{', '.join(FAMILY_NAMES)}")

    def without(self, family: str) -> SynthConfig:
        """This configuration without one surface family (the leave-one-out experiment)."""
        return replace(self, families=tuple(f for f in self.families if f != family))
