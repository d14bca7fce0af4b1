"""What every plan shares: device and parameter checks, run metadata, the truth stream."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import bluesky.plan_stubs as bps
from bluesky.utils import MsgGenerator

from spm_bluesky import schema
from spm_bluesky.devices.stm import STM
from spm_bluesky.domain import limits
from spm_bluesky.protocols import Policy


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


def check_policy(policy: Any) -> None:
    """Raise TypeError unless ``policy`` answers the :class:`~spm_bluesky.protocols.Policy`
    protocol (``name``, ``reset()`` and ``act()``)."""
    if not isinstance(policy, Policy):
        raise TypeError(f"policy needs name, reset() and act(); {type(policy).__name__} "
                        "does not have them all")


def policy_model_id(policy: Policy) -> str:
    """What the start document records as the policy's model: its ``model_id`` where it has
    one (a trained agent), else its name."""
    return str(getattr(policy, "model_id", policy.name))


def check_count(name: str, value: int, low: int = 1) -> None:
    """Raise ValueError unless ``value`` is an integer of at least ``low``."""
    if isinstance(value, bool) or int(value) != value or value < low:
        raise ValueError(f"{name}={value!r} must be an integer of at least {low}")


def check_mask_path(mask_path: str | None) -> Path | None:
    """The area-mask file as a Path, once it is sure the plan can write it; ValueError if not.

    Plans call this before their first message: a mask that cannot be kept must stop the
    plan before the instrument acts, not after an action whose forbidden disc is then lost.
    Where the folder exists a scratch file is created and removed in it (what saving does);
    otherwise the nearest existing folder above must be writable (saving creates the rest).
    """
    if mask_path is None:
        return None
    path = Path(mask_path)
    refused = f"mask_path={mask_path!r} cannot be written"
    if path.is_dir():
        raise ValueError(f"{refused}: it is a folder")
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"{refused}: the file is read-only")
    folder = path.parent
    if folder.is_dir():
        try:
            with tempfile.NamedTemporaryFile(dir=folder, prefix=path.name, suffix=".check"):
                pass
        except OSError as err:
            raise ValueError(f"{refused}: {err.strerror or err}") from None
        return path
    above = folder
    while not above.exists() and above != above.parent:
        above = above.parent
    if not above.is_dir() or not os.access(above, os.W_OK | os.X_OK):
        raise ValueError(f"{refused}: {above} is not a writable folder")
    return path


def run_metadata(
    stm: STM,
    plan_name: str,
    plan_args: dict[str, Any],
    session_uid: str | None,
    md: dict[str, Any] | None,
) -> MsgGenerator[dict[str, Any]]:
    """Build a start document's metadata (see :mod:`spm_bluesky.schema`); reads, never writes.

    Gives ``plan_name``, ``plan_args``, ``session_uid`` (when given), ``instrument``
    (device name, PV prefix, whether simulated) and, with the twin's ``sim`` part,
    ``twin_seed`` and a default ``sample`` naming the twin. ``md`` is merged last, so a
    caller's sample metadata wins.
    """
    run_md: dict[str, Any] = {
        schema.PLAN_NAME: plan_name,
        schema.PLAN_ARGS: {"stm": stm.name, **plan_args},
        "detectors": [stm.scan.name],
        schema.INSTRUMENT: {
            "name": stm.name,
            "prefix": stm.prefix,
            "simulated": stm.simulated,
            "approach_area_size": limits.APPROACH_AREA_SIZE,
        },
    }
    if session_uid is not None:
        run_md[schema.SESSION_UID] = session_uid
    if stm.simulated:
        seed = yield from bps.rd(stm.sim.seed)
        run_md[schema.TWIN_SEED] = int(seed)
        run_md[schema.SAMPLE] = {"name": "digital twin", schema.TWIN_SEED: int(seed)}
    run_md.update(md or {})
    return run_md


def read_truth(stm: STM) -> MsgGenerator[None]:
    """With the twin, record the true tip class in the ``truth`` stream (labels only)."""
    if stm.simulated:
        yield from bps.trigger_and_read([stm.sim], name=schema.TRUTH)
