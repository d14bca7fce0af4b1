"""Physics digital twin of a low-temperature STM (numpy/scipy only).

:class:`Instrument` is the entry point: sample, hidden tip, imaging and clock in one object.
"""

from .config import InstrumentConfig, NoiseConfig, SampleConfig, TipConfig, TwinConfig
from .imaging import Frame
from .instrument import Fault, Instrument, InstrumentError
from .sample import Sample
from .tip import Adsorbate, Apex, TipClass, TipState

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
