"""Parameters of the digital twin, with their physical meaning and defaults."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SampleConfig:
    """The procedurally generated Ag(100) + MgPc surface.

    Lengths in metres, heights in metres, densities per tile of :attr:`tile_size`.
    """

    #: Edge of one generation tile; each tile's features derive from (seed, area, tile index).
    tile_size: float = 25e-9
    #: Fraction of the surface covered by molecules (about 2.25 nm^2 per MgPc).
    coverage: float = 0.08
    #: Chance that a tile holds a small molecular cluster.
    cluster_probability: float = 0.25
    #: Chance that a tile holds debris (blobs taller than 0.6 nm).
    debris_probability: float = 0.12
    #: Chance that a tile holds a rough, contaminated patch.
    rough_probability: float = 0.06
    #: Monatomic step height of Ag(100).
    step_height: float = 0.204e-9
    #: Median terrace width; each approach area draws its own around this.
    terrace_width: float = 60e-9
    #: Apparent height range of a molecule's lobes.
    molecule_height: tuple[float, float] = (1.2e-10, 1.8e-10)
    #: Distance of the four lobes from the molecule centre (the cross is ~1.5 nm across).
    lobe_distance: float = 0.6e-9
    #: Gaussian width of one lobe.
    lobe_sigma: float = 0.17e-9


@dataclass(frozen=True)
class TipConfig:
    """The hidden tip state and its dynamics (see :mod:`spm_bluesky.twin.tip`)."""

    #: Apex radius of a good tip (m), drawn uniformly.
    good_radius: tuple[float, float] = (0.15e-9, 0.35e-9)
    #: Apex radius of a blunt tip (m), drawn uniformly.
    blunt_radius: tuple[float, float] = (0.8e-9, 1.6e-9)
    #: Radius above which the tip counts as blunt (m).
    blunt_threshold: float = 0.6e-9
    #: Per-line chance of a spontaneous flip for a good and for an unstable tip.
    good_instability: float = 0.0003
    unstable_instability: tuple[float, float] = (0.03, 0.06)
    #: Per-line instability above which the tip counts as unstable.
    unstable_threshold: float = 0.003
    #: Mean scanning time (s) before a good tip degrades by itself.
    mean_degrade_time: float = 3.0 * 3600
    #: Decay constant of the tunnelling current (1/m): I ~ exp(-2 kappa z).
    kappa: float = 1.1e10


@dataclass(frozen=True)
class NoiseConfig:
    """Instrument noise and distortions."""

    white: float = 2e-12
    #: Noise correlated along the fast axis: AR(1) with this coefficient and amplitude.
    fast_axis_correlation: float = 0.85
    fast_axis: float = 3e-12
    #: Per-line offset (m, standard deviation).
    line_offset: float = 4e-12
    #: Sample tilt: standard deviation of the plane slope (dimensionless).
    tilt: float = 0.01
    #: Thermal drift speed (m/s, standard deviation per axis).
    drift_speed: float = 10e-12
    #: Time constant over which thermal drift saturates (s): drift stays bounded.
    drift_time: float = 1800.0
    #: Piezo creep after an approach: amplitude (m) and time constant (s).
    creep_amplitude: float = 30e-9
    creep_time: float = 40.0
    #: Feedback loop: natural frequency (Hz) and damping ratio (under 1 overshoots).
    feedback_frequency: float = 150.0
    feedback_damping: float = 0.45


@dataclass(frozen=True)
class InstrumentConfig:
    """Timings and ranges of the instrument itself (limits: ``spm_bluesky.domain.limits``)."""

    #: z extension right after an approach (m); the z range is ``limits.Z_RANGE``.
    z_after_approach: float = 100e-9
    #: Coarse approach time and the settling wait after it (s).
    approach_time: float = 60.0
    settle_time: float = 120.0
    withdraw_time: float = 5.0
    #: Coarse stepping to a fresh approach area (s), before the approach.
    coarse_move_time: float = 90.0
    #: Overheads of a pulse and a dip beyond the pulse time itself (s).
    pulse_overhead: float = 0.1
    dip_time: float = 1.0
    #: Total height (dip depth plus local sample height, m) at which a dip crashes the tip.
    crash_height: float = 6.0e-9


@dataclass(frozen=True)
class TwinConfig:
    """Everything the twin needs besides its seed."""

    sample: SampleConfig = SampleConfig()
    tip: TipConfig = TipConfig()
    noise: NoiseConfig = NoiseConfig()
    instrument: InstrumentConfig = InstrumentConfig()
