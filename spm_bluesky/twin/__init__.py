"""Physics digital twin of a low-temperature STM (numpy/scipy only).

:class:`Instrument` is the entry point: sample, hidden tip, imaging and clock in one object.
"""

from spm_bluesky.twin.config import (
    InstrumentConfig,
    NoiseConfig,
    SampleConfig,
    TipConfig,
    TwinConfig,
)
from spm_bluesky.twin.imaging import Frame
from spm_bluesky.twin.instrument import Fault, Instrument, InstrumentError
from spm_bluesky.twin.sample import Sample
from spm_bluesky.twin.tip import Adsorbate, Apex, TipClass, TipState

__all__ = [
    "Adsorbate",
    "Apex",
    "Fault",
    "Frame",
    "Instrument",
    "InstrumentConfig",
    "InstrumentError",
    "NoiseConfig",
    "Sample",
    "SampleConfig",
    "TipClass",
    "TipConfig",
    "TipState",
    "TwinConfig",
]
