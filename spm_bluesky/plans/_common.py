"""What every plan shares: device checks, scan-setting validation and run metadata."""

from __future__ import annotations

from typing import Any

import bluesky.plan_stubs as bps
from bluesky.utils import MsgGenerator

from spm_bluesky.devices.stm import STM
from spm_bluesky.domain import limits


def check_stm(stm: Any) -> None:
    """Raise TypeError unless ``stm`` is an :class:`~spm_bluesky.devices.stm.STM`."""
    if not isinstance(stm, STM):
        raise TypeError(f"stm must be an spm_bluesky.devices.stm.STM, not {type(stm).__name__}")


def check_scan_settings(
    bias: float | None, setpoint: float | None, speed: float | None
) -> None:
    """Raise ValueError unless each given imaging setting is inside the instrument limits."""
    if bias is not None:
        limits.check_bias(bias)
    if setpoint is not None:
        limits.SCAN_SETPOINT.check("setpoint", setpoint)
    if speed is not None:
        limits.SCAN_SPEED.check("speed", speed)


def check_count(name: str, value: int, low: int = 1) -> None:
    """Raise ValueError unless ``value`` is an integer of at least ``low``."""
    if isinstance(value, bool) or int(value) != value or value < low:
        raise ValueError(f"{name}={value!r} must be an integer of at least {low}")


def run_metadata(
    stm: STM,
    plan_name: str,
    plan_args: dict[str, Any],
    session_uid: str | None,
    md: dict[str, Any] | None,
) -> MsgGenerator[dict[str, Any]]:
    """Build a start document's metadata (DESIGN.md data model); reads, never writes.

    Gives ``plan_name``, ``plan_args``, ``session_uid`` (when given), ``instrument``
    (device name, PV prefix, whether simulated) and, with the twin's ``sim`` part,
    ``twin_seed`` and a default ``sample`` naming the twin. ``md`` is merged last, so a
    caller's sample metadata wins.
    """
    run_md: dict[str, Any] = {
        "plan_name": plan_name,
        "plan_args": {"stm": stm.name, **plan_args},
        "detectors": [stm.scan.name],
        "instrument": {
            "name": stm.name,
            "prefix": stm.prefix,
            "simulated": stm.simulated,
            "approach_area_size": limits.APPROACH_AREA_SIZE,
        },
    }
    if session_uid is not None:
        run_md["session_uid"] = session_uid
    if stm.simulated:
        seed = yield from bps.rd(stm.sim.seed)
        run_md["twin_seed"] = int(seed)
        run_md["sample"] = {"name": "digital twin", "twin_seed": int(seed)}
    run_md.update(md or {})
    return run_md


def read_truth(stm: STM) -> MsgGenerator[None]:
    """With the twin, record the true tip class in the ``truth`` stream (labels only)."""
    if stm.simulated:
        yield from bps.trigger_and_read([stm.sim], name="truth")
