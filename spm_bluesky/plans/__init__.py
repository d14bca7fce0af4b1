"""Bluesky plans for the STM: imaging, area selection, conditioning and coarse motion.

All plans take the :class:`~spm_bluesky.devices.stm.STM` as their first argument, check every
parameter against :mod:`spm_bluesky.domain.limits` before writing anything, and open one run per
activity carrying ``plan_name``, ``session_uid`` (when given), instrument and sample
metadata and, on the twin, ``twin_seed`` (DESIGN.md, data model).

The plan modules do not use ``from __future__ import annotations``: the queueserver reads
the annotations as objects, and string annotations naming ``STM`` fail its validation.
"""

from spm_bluesky.plans.acquire import acquire_image, set_frame, survey
from spm_bluesky.plans.action import tip_action
from spm_bluesky.plans.autonomous import autonomous_session
from spm_bluesky.plans.coarse import approach, move_area, withdraw

__all__ = ["acquire_image", "approach", "autonomous_session", "move_area", "set_frame",
           "survey", "tip_action", "withdraw"]
