"""Tip conditioning by hand: apply one action of the DeepSPM action set at a given place."""

from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from bluesky.utils import MsgGenerator

from spm_bluesky import schema
from spm_bluesky.devices.stm import STM
from spm_bluesky.domain.actions import action_by_name
from spm_bluesky.domain.area import AreaMask
from spm_bluesky.plans._common import check_mask_path, check_stm, read_truth, run_metadata
from spm_bluesky.plans.stubs import apply_action, area_mask, block_disc, check_action


def tip_action(
    stm: STM,
    action: str,
    x: float,
    y: float,
    mask_path: str | None = None,
    session_uid: str | None = None,
    md: dict[str, Any] | None = None,
    mask: AreaMask | None = None,
) -> MsgGenerator[str]:
    """Apply the conditioning action named ``action`` at (x, y) (m), in a run of its own.

    ``action`` is a name from :data:`spm_bluesky.domain.actions.ACTIONS` (e.g. ``"pulse_+4.0V"``,
    ``"dip_1.8nm"``, ``"stall"``; stall moves nothing). The ``action`` stream gets one
    event after the action: the action name and parameters, place, action counter and the
    instrument status (contact, crash flag ...). The action's forbidden disc is blocked in
    ``mask`` (in memory, e.g. shared with ``survey``) and, with ``mask_path``, in the mask
    kept in that file. Everything, the file's writability included, is checked before
    anything is written. Returns the run's uid.
    """
    check_stm(stm)
    chosen = action_by_name(action)
    check_action(chosen, x, y)
    mask_file = check_mask_path(mask_path)
    mask = yield from area_mask(stm, mask, mask_file, position=(x, y))
    plan_args = {"action": action, "x": x, "y": y, "mask_path": mask_path}
    run_md = yield from run_metadata(stm, schema.TIP_ACTION, plan_args, session_uid, md)
    run_md[schema.TIP_ACTION_DETAILS] = {
        "name": chosen.name, "kind": chosen.kind.value, "bias": chosen.bias,
        "duration": chosen.duration, "depth": chosen.depth,
        "forbidden_radius": chosen.forbidden_radius}

    def apply() -> MsgGenerator[None]:
        yield from apply_action(stm, chosen, x, y)
        yield from bps.trigger_and_read([stm.tip, stm.status], name=schema.ACTION)
        yield from read_truth(stm)
        yield from block_disc(mask, x, y, chosen.forbidden_radius, mask_file)

    return (yield from bpp.run_wrapper(apply(), md=run_md))
