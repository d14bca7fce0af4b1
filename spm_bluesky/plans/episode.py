"""One tip-conditioning episode through the devices, driven by a policy (DeepSPM's loop 4).

Each step: the policy chooses an allowed action for the last image (allowed by the
free-square rule), the action is applied at the centre of that image's largest empty
square, its forbidden disc is blocked in the approach-area mask, a fresh spot is scanned
and assessed. Stops when p(good) exceeds the threshold or after ``max_actions`` actions.
A frame the assessor is unsure of (``Assessment.unsure``) is recorded and never acted on:
the next frame is taken elsewhere, and ``unsure_limit`` unsure frames in a row end the
episode unrepaired with ``unsure`` set in the outcome (the session then pauses for a person).
If the tip crashed (a dip, or a crash from outside) or lost contact during an action, the
episode records it and recovers before going on (:func:`~spm_bluesky.plans.stubs.recover_tip`:
a crash is made durable through ``safety`` and its disc blocked before the tip is withdrawn
and approached; a refused action is not counted) and goes on from a fresh frame outside the
crash disc. A policy that learns online (:class:`~spm_bluesky.protocols.LearningPolicy`) is told
how the episode ended.

Everything a later reader needs to rebuild the episode is in the run's documents:
``primary`` (every image, frame centre, clock), ``assessment`` (p(good), class
probabilities, model id, one event per image), ``action`` (the step, the action's name and
parameters, the spot, the free square, the mask, the policy's values per action, plus the
``Tip:*`` and ``Status:*`` readings), ``fault`` (a crash or lost contact during an action)
and, with the twin, ``truth``.

No torch and no twin here: the policy and the assessor are anything that answers the
:class:`~spm_bluesky.protocols.Policy` and :class:`~spm_bluesky.protocols.Assessor`
protocols. The approach-area mask is the caller's (``mask``, in memory, e.g. the autonomous
session's) or, with ``mask_path``, the one kept in that file.
"""

import math
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import numpy as np
from bluesky.utils import FailedStatus, MsgGenerator
from ophyd_async.plan_stubs import ensure_connected

from spm_bluesky import schema
from spm_bluesky.autonomy.rules import UNSURE_LIMIT, Verdict
from spm_bluesky.devices.stm import STM
from spm_bluesky.domain import limits, processing
from spm_bluesky.domain.actions import ACTIONS, action_mask
from spm_bluesky.domain.area import AreaMask
from spm_bluesky.plans._common import (
    check_count,
    check_mask_path,
    check_policy,
    check_stm,
    policy_model_id,
    run_metadata,
)
from spm_bluesky.plans.assess import AssessmentDevice, assess_image, check_assessor
from spm_bluesky.plans.records import FaultDevice, StepDevice
from spm_bluesky.plans.stubs import (
    FrameSettings,
    SafetyLog,
    TipFaultLog,
    apply_action,
    area_mask,
    block_disc,
    recover_tip,
    take_frame,
)
from spm_bluesky.protocols import HISTORY, Assessor, LearningPolicy, Policy, observation

GOOD_THRESHOLD = 0.9
MAX_ACTIONS = 100
#: Disc blocked around a crash during an action (m): DeepSPM's 150 nm.
CRASH_RADIUS = 150e-9


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
    mask: AreaMask | None = None,
    safety: SafetyLog | None = None,
    crash_radius: float = CRASH_RADIUS,
    unsure_limit: int = UNSURE_LIMIT,
) -> MsgGenerator[dict[str, Any]]:
    """Run one conditioning episode in a run of its own; see the module docstring.

    Starts by scanning the next free cell (the image the first decision is made on).
    ``mask`` (updated in place) or the mask kept in ``mask_path`` (checked writable before
    anything is written, saved after every change) says where the next frames and actions
    may go. ``safety`` makes a crash durable before the instrument acts again;
    ``crash_radius`` (m) is the disc a crash blocks. Returns ``{"uid", "actions",
    "crashes", "p_good", "success", "unsure_images", "unsure"}`` (actions applied;
    success: p(good) above the threshold within ``max_actions`` tries; the frames the
    assessor was unsure of, and whether ``unsure_limit`` of them in a row ended it).
    """
    check_stm(stm)
    check_count("max_actions", max_actions)
    check_count("unsure_limit", unsure_limit)
    if not 0.0 < crash_radius <= limits.APPROACH_AREA_SIZE:
        raise ValueError(f"crash_radius={crash_radius!r} m must be above 0 and at most the "
                         f"approach area ({limits.APPROACH_AREA_SIZE!r} m)")
    limits.check_frame(0.0, 0.0, size, pixels)
    if not 0.0 < good_threshold < 1.0:
        raise ValueError(f"good_threshold={good_threshold!r} must be between 0 and 1")
    check_policy(policy)
    check_assessor(assessor)
    mask_file = check_mask_path(mask_path)
    mask = yield from area_mask(stm, mask, mask_file)
    plan_args = {"policy": policy.name, "size": size, "pixels": pixels,
                 "max_actions": max_actions, "good_threshold": good_threshold,
                 "mask_path": mask_path, "unsure_limit": unsure_limit}
    model_ids = {schema.MODEL_ASSESSOR: assessor.model_id,
                 schema.MODEL_POLICY: policy_model_id(policy)}
    run_md = yield from run_metadata(stm, schema.CONDITION_TIP, plan_args, session_uid,
                                     {schema.MODEL_IDS: model_ids, **(md or {})})
    judge = AssessmentDevice()
    step_device = StepDevice()
    faults = TipFaultLog(FaultDevice(), safety, session_uid)
    yield from ensure_connected(judge, step_device, faults.device)
    outcome: dict[str, Any] = {"actions": 0, "crashes": 0, "p_good": float("nan"),
                               "success": False, "unsure_images": 0, "unsure": False}
    settings = FrameSettings(size, pixels)

    def scan_fresh(first: bool) -> MsgGenerator[tuple[np.ndarray, Any] | None]:
        cell = mask.next_cell(margin=size / 2)
        if cell is None:
            return None
        x, y = cell
        reading = yield from take_frame(stm, mask, x, y, size / 2, mask_file,
                                        settings if first else None)
        assessment = yield from assess_image(stm, assessor, judge, reading)
        image = np.asarray(reading[stm.scan.image.name]["value"], dtype=np.float64)
        return image, assessment

    def scan_sure(first: bool) -> MsgGenerator[tuple[np.ndarray, Any] | None]:
        """A fresh frame the assessor is sure of. Frames it is unsure of are recorded (their
        assessment event says so) and passed over, the next one taken elsewhere. None when
        no cell is left, or when ``unsure_limit`` frames in a row were unsure."""
        in_a_row = 0
        while True:
            scanned = yield from scan_fresh(first)
            first = False
            if scanned is None or not scanned[1].unsure:
                return scanned
            outcome["unsure_images"] += 1
            in_a_row += 1
            if in_a_row >= unsure_limit:
                outcome["unsure"] = True
                return None

    def apply(index: int, x: float, y: float) -> MsgGenerator[bool]:
        """Apply the action, then recover from a crash or lost contact; True if applied
        (False: the instrument refused it because the tip had crashed or lost contact)."""
        refused: FailedStatus | None = None
        try:
            yield from apply_action(stm, ACTIONS[index], x, y)
        except FailedStatus as err:
            refused = err
        fault = yield from recover_tip(stm, mask, faults, x, y, crash_radius, mask_file)
        if refused is not None and fault is None:
            raise refused
        outcome["crashes"] += fault == Verdict.CRASH.value
        return refused is None

    def episode() -> MsgGenerator[None]:
        policy.reset(None)
        history: list[tuple[int, float]] = []
        scanned = yield from scan_sure(first=True)
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
            applied = yield from apply(index, x, y)
            if not applied:  # the tip crashed or lost contact first: a fresh frame
                scanned = yield from scan_sure(first=False)
                if scanned is None:
                    break
                image, assessment = scanned
                outcome["p_good"] = assessment.p_good
                continue
            action = ACTIONS[index]
            values = np.full(len(ACTIONS), np.nan)
            if decision.values is not None:
                values = np.array([v if math.isfinite(v) and ok else np.nan
                                   for v, ok in zip(decision.values, allowed, strict=True)])
            d = step_device
            yield from bps.mv(
                d.step, step, d.action, action.name, d.action_index, index,
                d.kind, action.kind.value, d.bias, action.bias, d.duration, action.duration,
                d.depth, action.depth, d.spot_x, x, d.spot_y, y, d.free_square, free,
                d.forbidden_radius, action.forbidden_radius, d.mask, allowed.astype(np.int64),
                d.values, values, d.policy, policy.name)
            yield from bps.trigger_and_read([d, stm.tip, stm.status], name=schema.ACTION)
            yield from block_disc(mask, x, y, action.forbidden_radius, mask_file)
            outcome["actions"] += 1
            scanned = yield from scan_sure(first=False)
            if scanned is None:
                break
            image, assessment = scanned
            history.append((index, assessment.p_good))
            outcome["p_good"] = assessment.p_good
        outcome["success"] = not outcome["unsure"] and outcome["p_good"] > good_threshold
        if isinstance(policy, LearningPolicy) and outcome["actions"]:
            free, _ = processing.largest_empty_square(image, size)
            policy.end_episode(observation(processing.prepare(image, size)[0],
                                           assessment.probabilities, history,
                                           action_mask(free), HISTORY), outcome["success"])

    uid = yield from bpp.run_wrapper(episode(), md=run_md)
    return {"uid": uid, **outcome}

