"""Bluesky plans for the STM: imaging, area selection, conditioning and coarse motion.

All plans take the :class:`~spm_bluesky.devices.stm.STM` as their first argument, check every
parameter against :mod:`spm_bluesky.domain.limits` before writing anything, and open one run per
activity carrying ``plan_name``, ``session_uid`` (when given), instrument and sample
metadata and, on the twin, ``twin_seed`` (the names are in :mod:`spm_bluesky.schema`).
Plan stubs they are built from (take a frame, apply an action, block a disc of the
approach-area mask) are in :mod:`spm_bluesky.plans.stubs`; the mask itself is an in-memory
:class:`~spm_bluesky.domain.area.AreaMask` passed from plan to plan (``mask=``), kept in a
file only where a ``mask_path`` asks for it.

The plan modules do not use ``from __future__ import annotations``: the queueserver reads
the annotations as objects, and string annotations naming ``STM`` fail its validation.
"""

from spm_bluesky.plans.acquire import acquire_image, set_frame, survey
from spm_bluesky.plans.action import tip_action
from spm_bluesky.plans.autonomous import autonomous_session
from spm_bluesky.plans.coarse import approach, move_area, withdraw

__all__ = ["acquire_image", "approach", "autonomous_session", "move_area", "set_frame",
           "survey", "tip_action", "withdraw"]
