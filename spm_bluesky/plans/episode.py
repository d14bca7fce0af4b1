"""One tip-conditioning episode through the devices, driven by a policy (DeepSPM's loop 4).

Each step: the policy chooses an allowed action for the last image (allowed by the
free-square rule), the action is applied at the centre of that image's largest empty
square, its forbidden disc is blocked in the approach-area mask, a fresh spot is scanned
and assessed. Stops when p(good) exceeds the threshold or after ``max_actions`` actions.
A policy that learns online (:class:`~spm_bluesky.ml.agent.policies.LearningPolicy`) is told
how the episode ended.

Everything a later reader needs to rebuild the episode is in the run's documents:
``primary`` (every image, frame centre, clock), ``assessment`` (p(good), class
probabilities, model id, one event per image), ``action`` (the step, the action's name and
parameters, the spot, the free square, the mask, the policy's values per action, plus the
``Tip:*`` and ``Status:*`` readings) and, with the twin, ``truth``.

No torch and no twin here: the policy (:class:`spm_bluesky.ml.agent.policies.Policy`) and the
assessor (:class:`spm_bluesky.protocols.Assessor`) are duck-typed.
"""

import math
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import numpy as np
from bluesky.utils import MsgGenerator
from ophyd_async.core import Array1D, StandardReadable, soft_signal_rw
from ophyd_async.plan_stubs import ensure_connected

from spm_bluesky.devices.stm import STM
from spm_bluesky.domain import limits, processing
from spm_bluesky.domain.actions import ACTIONS, ActionKind, action_mask
from spm_bluesky.domain.area import CELL_SIZE, AreaMask
from spm_bluesky.plans._common import check_count, check_stm, read_truth, run_metadata
from spm_bluesky.plans.acquire import set_frame
from spm_bluesky.plans.assess import AssessmentDevice, assess_image
from spm_bluesky.protocols import HISTORY, Assessor, LearningPolicy, Policy, observation

#: Stream of the per-step decisions.
STREAM = "action"
GOOD_THRESHOLD = 0.9
MAX_ACTIONS = 100
#: Disc blocked around a dip that crashed (m): DeepSPM's 150 nm.
CRASH_RADIUS = 150e-9


class DecisionDevice(StandardReadable):
    """Soft signals holding one conditioning step's decision (read into ``action``)."""

    def __init__(self, name: str = "decision") -> None:
        with self.add_children_as_readables():
            self.step = soft_signal_rw(int, 0)
            self.action = soft_signal_rw(str, "")
            self.action_index = soft_signal_rw(int, -1)
            self.kind = soft_signal_rw(str, "")
            self.bias = soft_signal_rw(float, 0.0)
            self.duration = soft_signal_rw(float, 0.0)
            self.depth = soft_signal_rw(float, 0.0)
            self.spot_x = soft_signal_rw(float, 0.0)
            self.spot_y = soft_signal_rw(float, 0.0)
            self.free_square = soft_signal_rw(float, 0.0)
            self.forbidden_radius = soft_signal_rw(float, 0.0)
            self.mask = soft_signal_rw(Array1D[np.int64], np.zeros(len(ACTIONS), np.int64))
            #: The policy's value per action (its Q-values); NaN where it has none or the
            #: action was masked.
            self.values = soft_signal_rw(Array1D[np.float64],
                                         np.full(len(ACTIONS), np.nan))
            self.policy = soft_signal_rw(str, "")
        super().__init__(name=name)


def condition_tip(
    stm: STM,
    policy: Policy,
    assessor: Assessor,
    size: float = 10e-9,
    pixels: int = 64,
    max_actions: int = MAX_ACTIONS,
    good_threshold: float = GOOD_THRESHOLD,
    mask_path: str | None = None,
    session_uid: str | None = None,
    md: dict[str, Any] | None = None,
) -> MsgGenerator[dict[str, Any]]:
    """Run one conditioning episode in a run of its own; see the module docstring.

    Starts by scanning the next free cell (the image the first decision is made on).
    Returns ``{"uid", "actions", "p_good", "success"}`` (success: p(good) above the
    threshold within ``max_actions``).
    """
    check_stm(stm)
    check_count("max_actions", max_actions)
    limits.check_frame(0.0, 0.0, size, pixels)
    if not 0.0 < good_threshold < 1.0:
        raise ValueError(f"good_threshold={good_threshold!r} must be between 0 and 1")
    for attribute in ("name", "reset", "act"):
        if not hasattr(policy, attribute):
            raise TypeError(f"policy needs name, reset() and act(); "
                            f"{type(policy).__name__} has no {attribute}")
    area_index = yield from bps.rd(stm.status.area_index)
    start_x = yield from bps.rd(stm.scan.center_x)
    start_y = yield from bps.rd(stm.scan.center_y)
    mask = AreaMask.load_or_new(mask_path, int(area_index), (start_x, start_y), CELL_SIZE)
    plan_args = {"policy": policy.name, "size": size, "pixels": pixels,
                 "max_actions": max_actions, "good_threshold": good_threshold,
                 "mask_path": mask_path}
    model_ids = {"assessor": assessor.model_id,
                 "policy": str(getattr(policy, "model_id", policy.name))}
    run_md = yield from run_metadata(stm, "condition_tip", plan_args, session_uid,
                                     {"model_ids": model_ids, **(md or {})})
    judge = AssessmentDevice()
    decision_device = DecisionDevice()
    yield from ensure_connected(judge, decision_device)
    outcome: dict[str, Any] = {"actions": 0, "p_good": float("nan"), "success": False}

    def scan_fresh(first: bool) -> MsgGenerator[tuple[np.ndarray, Any] | None]:
        cell = mask.next_cell(margin=size / 2)
        if cell is None:
            return None
        x, y = cell
        if first:
            yield from set_frame(stm, x, y, size, pixels)
        else:
            yield from bps.mv(stm.scan.center_x, x, stm.scan.center_y, y)
        reading = yield from bps.trigger_and_read([stm.scan])
        mask.block_disc(x, y, size / 2)
        mask.position = (x, y)
        assessment = yield from assess_image(stm, assessor, judge, reading)
        yield from read_truth(stm)
        image = np.asarray(reading[stm.scan.image.name]["value"], dtype=np.float64)
        return image, assessment

    def apply(index: int, x: float, y: float) -> MsgGenerator[None]:
        action = ACTIONS[index]
        yield from bps.mv(stm.tip.action_name, action.name)
        if action.kind is ActionKind.PULSE:
            yield from bps.mv(stm.tip.action_x, x, stm.tip.action_y, y,
                              stm.tip.pulse_bias, action.bias, stm.tip.pulse_time,
                              action.duration)
            yield from bps.trigger(stm.tip.pulse, wait=True)
        elif action.kind is ActionKind.DIP:
            yield from bps.mv(stm.tip.action_x, x, stm.tip.action_y, y,
                              stm.tip.dip_depth, action.depth)
            yield from bps.trigger(stm.tip.dip, wait=True)
            crashed = yield from bps.rd(stm.status.crashed)
            if crashed:
                mask.block_disc(x, y, CRASH_RADIUS)
                yield from bps.trigger(stm.coarse.withdraw, wait=True)
                yield from bps.trigger(stm.coarse.approach, wait=True)

    def episode() -> MsgGenerator[None]:
        policy.reset(None)
        history: list[tuple[int, float]] = []
        scanned = yield from scan_fresh(first=True)
        if scanned is None:
            return
        image, assessment = scanned
        outcome["p_good"] = assessment.p_good
        for step in range(1, max_actions + 1):
            if assessment.p_good > good_threshold:
                break
            free, (dx, dy) = processing.largest_empty_square(image, size)
            allowed = np.array(action_mask(free), dtype=bool)
            obs = observation(processing.prepare(image, size)[0], assessment.probabilities,
                              history, allowed, HISTORY)
            decision = policy.act(obs, allowed)
            index = int(decision.action)
            if not allowed[index]:
                raise RuntimeError(f"policy {policy.name} chose masked action "
                                   f"{ACTIONS[index].name}")
            centre_x = yield from bps.rd(stm.scan.center_x)
            centre_y = yield from bps.rd(stm.scan.center_y)
            x, y = float(centre_x) + dx, float(centre_y) + dy
            yield from bps.checkpoint()
            yield from apply(index, x, y)
            action = ACTIONS[index]
            values = np.full(len(ACTIONS), np.nan)
            if decision.values is not None:
                values = np.array([v if math.isfinite(v) and ok else np.nan
                                   for v, ok in zip(decision.values, allowed, strict=True)])
            yield from bps.mv(
                decision_device.step, step, decision_device.action, action.name,
                decision_device.action_index, index, decision_device.kind, action.kind.value,
                decision_device.bias, action.bias, decision_device.duration, action.duration,
                decision_device.depth, action.depth, decision_device.spot_x, x,
                decision_device.spot_y, y, decision_device.free_square, free,
                decision_device.forbidden_radius, action.forbidden_radius,
                decision_device.mask, allowed.astype(np.int64),
                decision_device.values, values, decision_device.policy, policy.name)
            yield from bps.trigger_and_read([decision_device, stm.tip, stm.status],
                                            name=STREAM)
            mask.block_disc(x, y, action.forbidden_radius)
            mask.position = (x, y)
            outcome["actions"] = step
            scanned = yield from scan_fresh(first=False)
            if mask_path is not None:
                mask.save(mask_path)
            if scanned is None:
                break
            image, assessment = scanned
            history.append((index, assessment.p_good))
            outcome["p_good"] = assessment.p_good
        outcome["success"] = outcome["p_good"] > good_threshold
        if mask_path is not None:  # also when the first image was already good
            mask.save(mask_path)
        if isinstance(policy, LearningPolicy) and outcome["actions"]:
            free, _ = processing.largest_empty_square(image, size)
            policy.end_episode(observation(processing.prepare(image, size)[0],
                                           assessment.probabilities, history,
                                           action_mask(free), HISTORY), outcome["success"])

    uid = yield from bpp.run_wrapper(episode(), md=run_md)
    return {"uid": uid, **outcome}
