# ruff: noqa: F401, F821
# (Startup files run in one namespace: later files use names from earlier ones.)
"""The plans, as global names (the queueserver finds them here)."""

import bluesky.plan_stubs as bps
import bluesky.plans as bp

from spm_bluesky.plans import acquire_image, approach, move_area, survey, tip_action, withdraw

AREA_MASK = settings.area_mask  # survey(stm, n, mask_path=AREA_MASK) keeps the mask on disk
