"""Instrument limits, shared by the IOC (which refuses puts) and the plans (which check first).

Values follow the original DeepSPM instrument server (see DEEPSPM.md), in SI units.
Pure Python: imported by every layer.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The PV prefix of the instrument contract when none is given (IOC, devices, services).
DEFAULT_PREFIX = "STM:"


@dataclass(frozen=True)
class Range:
    """A closed interval ``[low, high]`` with a unit, for one instrument parameter."""

    low: float
    high: float
    unit: str

    def contains(self, value: float) -> bool:
        """True if ``value`` lies inside the interval."""
        return self.low <= value <= self.high

    def check(self, name: str, value: float) -> None:
        """Raise ValueError naming the parameter if ``value`` is outside the interval."""
        if not self.contains(value):
            raise ValueError(
                f"{name}={value!r} {self.unit} is outside the instrument limits "
                f"[{self.low!r}, {self.high!r}] {self.unit}"
            )


#: Edge length of one approach area: what the piezo reaches without coarse motion (m).
APPROACH_AREA_SIZE = 850e-9
#: Fraction of the piezo range that may be used (the rest is kept as margin).
USABLE_RANGE_FRACTION = 0.95
#: Half-width of the usable frame-centre window (m).
CENTER_HALF_RANGE = USABLE_RANGE_FRACTION * APPROACH_AREA_SIZE / 2
#: z piezo travel (m).
Z_RANGE = 200e-9

SCAN_CENTER = Range(-CENTER_HALF_RANGE, CENTER_HALF_RANGE, "m")
SCAN_SIZE = Range(1e-9, 200e-9, "m")
SCAN_PIXELS = Range(8, 1024, "px")
SCAN_SPEED = Range(1e-9, 2e-6, "m/s")
SCAN_BIAS = Range(-8.2, 8.2, "V")
#: Smallest imaging-bias magnitude the feedback can work with (V).
MIN_BIAS_MAGNITUDE = 0.019
SCAN_SETPOINT = Range(1e-12, 10e-9, "A")
PULSE_BIAS = Range(-10.0, 10.0, "V")
PULSE_TIME = Range(0.02, 5.0, "s")
DIP_DEPTH = Range(0.0, 30e-9, "m")
ACTION_POSITION = Range(-CENTER_HALF_RANGE, CENTER_HALF_RANGE, "m")
TIME_SCALE = Range(0.0, 1000.0, "")


def check_frame(center_x: float, center_y: float, size: float, pixels: int) -> None:
    """Raise ValueError unless a frame lies fully inside the usable piezo range."""
    SCAN_SIZE.check("size", size)
    SCAN_PIXELS.check("pixels", pixels)
    if int(pixels) != pixels:
        raise ValueError(f"pixels={pixels!r} must be an integer")
    for name, value in (("x", center_x), ("y", center_y)):
        SCAN_CENTER.check(name, value)
        if abs(value) + size / 2 > CENTER_HALF_RANGE:
            raise ValueError(
                f"frame {name}={value!r} m with size {size!r} m reaches outside the usable "
                f"piezo range of +-{CENTER_HALF_RANGE!r} m"
            )


def check_bias(bias: float) -> None:
    """Raise ValueError unless ``bias`` is a usable imaging bias."""
    SCAN_BIAS.check("bias", bias)
    if abs(bias) < MIN_BIAS_MAGNITUDE:
        raise ValueError(f"bias={bias!r} V is below the minimum magnitude {MIN_BIAS_MAGNITUDE} V")
