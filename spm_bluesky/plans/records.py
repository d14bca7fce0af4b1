"""Soft devices that put the loop's decisions into documents (no PVs behind them).

A plan writes a decision into one of these with ``bps.mv`` and reads it into its stream, so
a later reader rebuilds from the documents alone why every action was taken and which discs
of the approach area were blocked:

- :class:`StepDevice`: one conditioning step (``action`` stream of ``condition_tip``);
- :class:`VerdictDevice`: one frame's verdict and the counters after it (``decision``
  stream of ``autonomous_scan``);
- :class:`FaultDevice`: a fault a suspender handled (``fault`` stream).

Both decision devices are named :data:`~spm_bluesky.schema.DECISION_DEVICE`, so their data
keys are the ``STEP_*`` and ``DECISION_*`` names of :mod:`spm_bluesky.schema`.
"""

import numpy as np
from ophyd_async.core import Array1D, StandardReadable, soft_signal_rw

from spm_bluesky import schema
from spm_bluesky.autonomy.rules import UNKNOWN_TIP
from spm_bluesky.domain.actions import ACTIONS


class StepDevice(StandardReadable):
    """One conditioning step: the action, where, the action mask and the policy's values."""

    def __init__(self, name: str = schema.DECISION_DEVICE) -> None:
        with self.add_children_as_readables():
            self.step = soft_signal_rw(int, 0)
            self.action = soft_signal_rw(str, "")
            self.action_index = soft_signal_rw(int, -1)
            self.kind = soft_signal_rw(str, "")
            self.bias = soft_signal_rw(float, 0.0)
            self.duration = soft_signal_rw(float, 0.0)
            self.depth = soft_signal_rw(float, 0.0)
            self.spot_x = soft_signal_rw(float, 0.0)
            self.spot_y = soft_signal_rw(float, 0.0)
            self.free_square = soft_signal_rw(float, 0.0)
            self.forbidden_radius = soft_signal_rw(float, 0.0)
            self.mask = soft_signal_rw(Array1D[np.int64], np.zeros(len(ACTIONS), np.int64))
            #: The policy's value per action (its Q-values); NaN where it has none or the
            #: action was masked.
            self.values = soft_signal_rw(Array1D[np.float64],
                                         np.full(len(ACTIONS), np.nan))
            self.policy = soft_signal_rw(str, "")
        super().__init__(name=name)


class VerdictDevice(StandardReadable):
    """One frame's verdict, the disc it blocked and the session's counters after it."""

    def __init__(self, name: str = schema.DECISION_DEVICE) -> None:
        with self.add_children_as_readables():
            self.verdict = soft_signal_rw(str, "")
            self.peak_to_peak = soft_signal_rw(float, 0.0)
            self.block_x = soft_signal_rw(float, 0.0)
            self.block_y = soft_signal_rw(float, 0.0)
            self.block_radius = soft_signal_rw(float, 0.0)
            self.area_index = soft_signal_rw(int, 0)
            self.clock = soft_signal_rw(float, 0.0)
            self.elapsed = soft_signal_rw(float, 0.0)
            self.image = soft_signal_rw(int, 0)
            self.good_images = soft_signal_rw(int, 0)
            self.consecutive_bad = soft_signal_rw(int, 0)
            self.debris_retries = soft_signal_rw(int, 0)
            self.tip_belief = soft_signal_rw(float, UNKNOWN_TIP)
        super().__init__(name=name)


class FaultDevice(StandardReadable):
    """A fault a suspender handled: its kind, where, the disc it blocked, when."""

    def __init__(self, name: str = schema.FAULT_DEVICE) -> None:
        with self.add_children_as_readables():
            self.kind = soft_signal_rw(str, "")
            self.x = soft_signal_rw(float, 0.0)
            self.y = soft_signal_rw(float, 0.0)
            self.radius = soft_signal_rw(float, 0.0)
            self.clock = soft_signal_rw(float, 0.0)
            self.crash_count = soft_signal_rw(int, 0)
        super().__init__(name=name)
