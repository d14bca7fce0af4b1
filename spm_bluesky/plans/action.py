"""Tip conditioning: apply one action of the DeepSPM action set at a given place."""

from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from bluesky.utils import MsgGenerator

from spm_bluesky.devices.stm import STM
from spm_bluesky.domain import limits
from spm_bluesky.domain.actions import ActionKind, TipAction, action_by_name
from spm_bluesky.domain.area import CELL_SIZE, AreaMask
from spm_bluesky.plans._common import check_stm, read_truth, run_metadata


def check_action(action: TipAction, x: float, y: float) -> None:
    """Raise ValueError unless the action and its place are inside the instrument limits."""
    limits.ACTION_POSITION.check("x", x)
    limits.ACTION_POSITION.check("y", y)
    if action.kind is ActionKind.PULSE:
        limits.PULSE_BIAS.check("pulse bias", action.bias)
        limits.PULSE_TIME.check("pulse time", action.duration)
    elif action.kind is ActionKind.DIP:
        limits.DIP_DEPTH.check("dip depth", action.depth)


def tip_action(
    stm: STM,
    action: str,
    x: float,
    y: float,
    mask_path: str | None = None,
    session_uid: str | None = None,
    md: dict[str, Any] | None = None,
) -> MsgGenerator[str]:
    """Apply the conditioning action named ``action`` at (x, y) (m), in a run of its own.

    ``action`` is a name from :data:`spm_bluesky.domain.actions.ACTIONS` (e.g. ``"pulse_+4.0V"``,
    ``"dip_1.8nm"``, ``"stall"``; stall moves nothing). The ``action`` stream gets one
    event after the action: the action name and parameters, place, action counter and the
    instrument status (contact, crash flag ...). With ``mask_path`` the action's forbidden
    disc is blocked in the saved area mask. Everything is checked before anything is
    written. Returns the run's uid.
    """
    check_stm(stm)
    chosen = action_by_name(action)
    check_action(chosen, x, y)
    area_index = yield from bps.rd(stm.status.area_index)
    mask = AreaMask.load_or_new(mask_path, int(area_index), (x, y), CELL_SIZE)
    plan_args = {"action": action, "x": x, "y": y, "mask_path": mask_path}
    run_md = yield from run_metadata(stm, "tip_action", plan_args, session_uid, md)
    run_md["action"] = {"name": chosen.name, "kind": chosen.kind.value, "bias": chosen.bias,
                        "duration": chosen.duration, "depth": chosen.depth,
                        "forbidden_radius": chosen.forbidden_radius}

    def apply() -> MsgGenerator[None]:
        yield from bps.mv(stm.tip.action_name, chosen.name)
        if chosen.kind is ActionKind.PULSE:
            yield from bps.mv(stm.tip.action_x, x, stm.tip.action_y, y,
                              stm.tip.pulse_bias, chosen.bias,
                              stm.tip.pulse_time, chosen.duration)
            yield from bps.trigger(stm.tip.pulse, wait=True)
        elif chosen.kind is ActionKind.DIP:
            yield from bps.mv(stm.tip.action_x, x, stm.tip.action_y, y,
                              stm.tip.dip_depth, chosen.depth)
            yield from bps.trigger(stm.tip.dip, wait=True)
        yield from bps.trigger_and_read([stm.tip, stm.status], name="action")
        yield from read_truth(stm)
        mask.block_disc(x, y, chosen.forbidden_radius)
        mask.position = (x, y)
        if mask_path is not None:
            mask.save(mask_path)

    return (yield from bpp.run_wrapper(apply(), md=run_md))
