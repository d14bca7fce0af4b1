"""Plan stubs the plans are built from: set and take a frame, apply a conditioning action,
block a disc of the approach-area mask, pick the mask to work on, recover the tip after a
crash or a lost contact during an action.

Each runs inside a run a plan has opened (none opens or closes one), so the plans compose
them with ``yield from``: a survey is frames in a row, a conditioning episode alternates
frames and actions, and the autonomous loop passes one in-memory
:class:`~spm_bluesky.domain.area.AreaMask` from plan to plan. What is blocked is in the
documents too (frame centres in ``primary``, action spots and radii in ``action``, verdict
discs in ``decision``), so a session's mask can be rebuilt from Tiled alone; a mask file
is only a convenience copy for sessions without one.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bluesky.plan_stubs as bps
import numpy as np
from bluesky.protocols import Reading
from bluesky.utils import MsgGenerator

from spm_bluesky import schema
from spm_bluesky.autonomy.rules import Verdict
from spm_bluesky.autonomy.state import CRASH_MARK, crash_mark
from spm_bluesky.devices.stm import STM
from spm_bluesky.domain import limits
from spm_bluesky.domain.actions import ActionKind, TipAction
from spm_bluesky.domain.area import CELL_SIZE, AreaMask
from spm_bluesky.plans._common import read_truth
from spm_bluesky.plans.records import FaultDevice

#: Makes a safety record durable before the plan goes on: ``safety(kind, data)``
#: (e.g. :meth:`spm_bluesky.storage.durable.DurablePath.mark`).
SafetyLog = Callable[[str, Mapping[str, Any]], None]


def check_action(action: TipAction, x: float, y: float) -> None:
    """Raise ValueError unless the action and its place are inside the instrument limits."""
    limits.ACTION_POSITION.check("x", x)
    limits.ACTION_POSITION.check("y", y)
    if action.kind is ActionKind.PULSE:
        limits.PULSE_BIAS.check("pulse bias", action.bias)
        limits.PULSE_TIME.check("pulse time", action.duration)
    elif action.kind is ActionKind.DIP:
        limits.DIP_DEPTH.check("dip depth", action.depth)


@dataclass(frozen=True)
class FrameSettings:
    """A frame's edge (m), pixels per line and the imaging settings written with it (None:
    leave as it is), already checked against the instrument limits."""

    size: float
    pixels: int
    bias: float | None = None
    setpoint: float | None = None
    speed: float | None = None


def set_frame(
    stm: STM,
    x: float,
    y: float,
    size: float,
    pixels: int,
    bias: float | None = None,
    setpoint: float | None = None,
    speed: float | None = None,
) -> MsgGenerator[None]:
    """Write a frame's settings (already validated), keeping the frame inside the range.

    When the frame grows, the centre moves first; when it shrinks, the size changes first,
    so no intermediate centre/size pair reaches outside the piezo range.
    """
    settings: list[Any] = [stm.scan.pixels, int(pixels)]
    for signal, value in ((stm.scan.bias, bias), (stm.scan.setpoint, setpoint),
                          (stm.scan.speed, speed)):
        if value is not None:
            settings += [signal, value]
    yield from bps.mv(*settings)
    current_size = yield from bps.rd(stm.scan.size, default_value=size)
    centre = [stm.scan.center_x, x, stm.scan.center_y, y]
    if size <= current_size:
        yield from bps.mv(stm.scan.size, size)
        yield from bps.mv(*centre)
    else:
        yield from bps.mv(*centre)
        yield from bps.mv(stm.scan.size, size)


def block_disc(
    mask: AreaMask,
    x: float,
    y: float,
    radius: float,
    mask_file: Path | None = None,
) -> MsgGenerator[int]:
    """Block the disc of ``radius`` (m) around (x, y) and make (x, y) the spiral's position.

    With ``mask_file`` (checked writable before the plan acted:
    :func:`~spm_bluesky.plans._common.check_mask_path`) the mask is saved there too. Emits
    no message; a stub so that every plan blocks, and keeps its file, the same way. Returns
    how many cells were newly blocked.
    """
    yield from ()
    newly = mask.block_disc(x, y, radius)
    mask.position = (x, y)
    if mask_file is not None:
        mask.save(mask_file)
    return newly


def take_frame(
    stm: STM,
    mask: AreaMask,
    x: float,
    y: float,
    radius: float,
    mask_file: Path | None = None,
    settings: FrameSettings | None = None,
) -> MsgGenerator[dict[str, Reading]]:
    """Scan the frame centred at (x, y) into ``primary`` (and ``truth`` on the twin), then
    block ``radius`` around it.

    With ``settings`` (a run's first frame) the whole frame is written (:func:`set_frame`);
    without, only its centre moves. Returns the scan detector's reading.
    """
    if settings is None:
        yield from bps.mv(stm.scan.center_x, x, stm.scan.center_y, y)
    else:
        yield from set_frame(stm, x, y, settings.size, settings.pixels, settings.bias,
                             settings.setpoint, settings.speed)
    reading: dict[str, Reading] = yield from bps.trigger_and_read([stm.scan])
    yield from read_truth(stm)
    yield from block_disc(mask, x, y, radius, mask_file)
    return reading


def apply_action(stm: STM, action: TipAction, x: float, y: float) -> MsgGenerator[None]:
    """Apply one conditioning action at (x, y) (m) and wait until it is done.

    Writes the action's name, then for a pulse or a dip its place and parameters before
    triggering it (``put`` completes when the instrument has finished); a stall writes its
    name only. The caller has checked the action (:func:`check_action`) and records it.
    """
    yield from bps.mv(stm.tip.action_name, action.name)
    if action.kind is ActionKind.PULSE:
        yield from bps.mv(stm.tip.action_x, x, stm.tip.action_y, y,
                          stm.tip.pulse_bias, action.bias, stm.tip.pulse_time, action.duration)
        yield from bps.trigger(stm.tip.pulse, wait=True)
    elif action.kind is ActionKind.DIP:
        yield from bps.mv(stm.tip.action_x, x, stm.tip.action_y, y,
                          stm.tip.dip_depth, action.depth)
        yield from bps.trigger(stm.tip.dip, wait=True)


@dataclass(frozen=True)
class TipFaultLog:
    """Where a plan records a tip fault: the ``fault`` stream's device, the durable safety
    log (None: none kept) and the session the crash marks belong to."""

    device: FaultDevice
    safety: SafetyLog | None = None
    session_uid: str | None = None


def recover_tip(
    stm: STM,
    mask: AreaMask,
    log: TipFaultLog,
    x: float,
    y: float,
    crash_radius: float,
    mask_file: Path | None = None,
) -> MsgGenerator[str | None]:
    """If the tip crashed or lost contact (e.g. during an action at (x, y)), record it and
    approach again; return the fault's kind (``"crash"``, ``"lost_contact"``) or None.

    A crash is made durable first (a crash mark through ``log.safety``, before the
    instrument acts again), its disc of ``crash_radius`` around (x, y) is blocked (the
    spiral goes on from there, so the next frame is outside it), a ``fault`` event records
    it, then the tip is withdrawn and approached. A lost contact gets a ``fault`` event
    (no disc) and an approach.
    """
    status = yield from bps.read(stm.status)
    crashed = bool(status[stm.status.crashed.name]["value"])
    if not crashed and status[stm.status.contact.name]["value"]:
        return None
    clock = float(status[stm.status.clock.name]["value"])
    crash_count = int(status[stm.status.crash_count.name]["value"])
    area = int(status[stm.status.area_index.name]["value"])
    radius = crash_radius if crashed else 0.0
    if crashed:
        if log.safety is not None:
            log.safety(CRASH_MARK, crash_mark(log.session_uid or "", area, x, y, radius,
                                              clock, crash_count))
        yield from block_disc(mask, x, y, radius, mask_file)
    kind = (Verdict.CRASH if crashed else Verdict.LOST_CONTACT).value
    f = log.device
    yield from bps.mv(f.kind, kind, f.x, x, f.y, y, f.radius, radius, f.clock, clock,
                      f.crash_count, crash_count)
    yield from bps.trigger_and_read([f], name=schema.FAULT)
    if crashed:
        yield from bps.trigger(stm.coarse.withdraw, wait=True)
    yield from bps.trigger(stm.coarse.approach, wait=True)
    return kind


def area_mask(
    stm: STM,
    mask: AreaMask | None = None,
    mask_file: Path | None = None,
    position: tuple[float, float] | None = None,
) -> MsgGenerator[AreaMask]:
    """The mask of the approach area the tip is over; reads, never writes.

    ``mask`` (in memory, shared between plans) is used as it is, or emptied in place if it
    belongs to another area; without it the mask kept in ``mask_file`` is loaded, or a fresh
    one starts at ``position`` (default: the current frame centre).
    """
    area_index = int((yield from bps.rd(stm.status.area_index)))
    if position is None:
        x = yield from bps.rd(stm.scan.center_x)
        y = yield from bps.rd(stm.scan.center_y)
        position = (float(x), float(y))
    if mask is None:
        return AreaMask.load_or_new(mask_file, area_index, position, CELL_SIZE)
    if mask.area_index != area_index:
        mask.area_index = area_index
        mask.blocked = np.zeros_like(mask.blocked)
        mask.position = position
    return mask


__all__ = ["FrameSettings", "SafetyLog", "TipFaultLog", "apply_action", "area_mask",
           "block_disc", "check_action", "recover_tip", "set_frame", "take_frame"]
