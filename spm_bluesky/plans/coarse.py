"""Coarse motion: approach, withdraw, and move to a fresh approach area.

Each is one run whose ``primary`` stream holds the instrument status before and after.
"""

from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from bluesky.utils import MsgGenerator

from spm_bluesky import schema
from spm_bluesky.devices.stm import STM, Command
from spm_bluesky.domain.area import CELL_SIZE, AreaMask
from spm_bluesky.plans._common import check_mask_path, check_stm, run_metadata


def _coarse_run(
    stm: STM,
    command: Command,
    plan_name: str,
    plan_args: dict[str, Any],
    session_uid: str | None,
    md: dict[str, Any] | None,
) -> MsgGenerator[str]:
    run_md = yield from run_metadata(stm, plan_name, plan_args, session_uid, md)

    def body() -> MsgGenerator[None]:
        yield from bps.trigger_and_read([stm.status])
        yield from bps.trigger(command, wait=True)
        yield from bps.trigger_and_read([stm.status])

    return (yield from bpp.run_wrapper(body(), md=run_md))


def approach(
    stm: STM, session_uid: str | None = None, md: dict[str, Any] | None = None
) -> MsgGenerator[str]:
    """Coarse-approach into tunnelling range; done once ``Status:Contact`` reads 1."""
    check_stm(stm)
    return (yield from _coarse_run(stm, stm.coarse.approach, schema.APPROACH, {}, session_uid,
                                    md))


def withdraw(
    stm: STM, session_uid: str | None = None, md: dict[str, Any] | None = None
) -> MsgGenerator[str]:
    """Retract the tip out of tunnelling range; done once ``Status:Contact`` reads 0."""
    check_stm(stm)
    return (yield from _coarse_run(stm, stm.coarse.withdraw, schema.WITHDRAW, {}, session_uid,
                                    md))


def move_area(
    stm: STM,
    mask_path: str | None = None,
    session_uid: str | None = None,
    md: dict[str, Any] | None = None,
) -> MsgGenerator[str]:
    """Withdraw, coarse-step to a fresh approach area and re-approach (``Coarse:MoveArea``).

    Done once ``Coarse:AreaIndex`` has moved on. With ``mask_path`` (checked writable
    before the move) a fresh, empty area mask for the new area is saved there; a mask in
    memory is started afresh by whoever holds it (plans do so when they see its area is
    not the tip's). Returns the run's uid.
    """
    check_stm(stm)
    mask_file = check_mask_path(mask_path)
    uid = yield from _coarse_run(
        stm, stm.coarse.move_area, schema.MOVE_AREA, {"mask_path": mask_path}, session_uid, md
    )
    if mask_file is not None:
        area_index = yield from bps.rd(stm.status.area_index)
        AreaMask(area_index=int(area_index), cell_size=CELL_SIZE).save(mask_file)
    return uid
