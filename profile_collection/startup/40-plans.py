# ruff: noqa: F401, F821
# (Startup files run in one namespace: later files use names from earlier ones.)
"""The plans, as global names (the queueserver finds them here).

``autonomous_session`` takes the assessor and the policy by name
(``RE(autonomous_session(stm, policy="heuristic", images=20))``), so the queueserver can
queue it too. A mask of the approach area passes between plans in memory
(``survey(stm, 3, mask=area)``); ``AREA_MASK`` is this data directory's mask file, for
keeping the mask across restarts (``survey(stm, 3, mask_path=AREA_MASK)``).
"""

import bluesky.plan_stubs as bps
import bluesky.plans as bp

from spm_bluesky.domain.area import AreaMask
from spm_bluesky.plans import acquire_image, approach, move_area, survey, tip_action, withdraw
from spm_bluesky.services.queue_plans import autonomous_session

AREA_MASK = settings.area_mask
