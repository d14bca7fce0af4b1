"""DeepSPM's autonomous loop as one Bluesky plan: scan, judge, keep or block, repair, move on.

:func:`autonomous_session` opens many small runs, all with one ``session_uid``
(docs/reference/data-model.md has every run type, start-document key, stream and field):

- ``autonomous_scan``: up to ``run_images`` frames along the spiral-closest path over the
  approach-area mask; each frame is assessed and gets a verdict (kept, bad, debris, crash,
  lost contact, unsure) and a blocked disc; unsure images in a row pause the session;
- ``condition_tip`` after more than ``bad_limit`` bad images in a row;
- ``move_area`` when no free cell is left or an episode failed; ``withdraw`` and
  ``approach`` to recover from a crash or lost contact.

Small runs keep what a killed process loses small and let the TiledWriter write a run's
events in one batch. During scan runs two suspenders pause the session: lost tunnelling
contact (its ``pre_plan`` approaches again) and a lost IOC (it resumes when the IOC serves
again); see :mod:`spm_bluesky.autonomy.faults`. ``resume_state``
(:func:`spm_bluesky.autonomy.state.rebuild`) continues a stopped session without
rescanning its used cells.
"""

import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import replace
from enum import Enum
from pathlib import Path
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from bluesky.suspenders import SuspendBoolLow
from bluesky.utils import MsgGenerator
from ophyd_async.plan_stubs import ensure_connected

from spm_bluesky import schema
from spm_bluesky.autonomy.faults import GuardedReadable, GuardedScan, LinkMonitor, ValueWatch
from spm_bluesky.autonomy.rules import (
    UNKNOWN_TIP,
    UNSURE_LIMIT,
    SessionConfig,
    SessionState,
    Verdict,
    classify,
    update_belief,
)
from spm_bluesky.autonomy.state import CRASH_MARK, crash_mark
from spm_bluesky.devices.stm import STM
from spm_bluesky.domain.area import CELL_SIZE, AreaMask
from spm_bluesky.plans._common import (
    check_mask_path,
    check_policy,
    check_stm,
    policy_model_id,
    run_metadata,
)
from spm_bluesky.plans.assess import AssessmentDevice, check_assessor, frame_from_reading
from spm_bluesky.plans.coarse import approach, move_area, withdraw
from spm_bluesky.plans.episode import condition_tip
from spm_bluesky.plans.records import FaultDevice, VerdictDevice
from spm_bluesky.protocols import Assessor, Policy

logger = logging.getLogger(__name__)

#: Seconds to wait after the IOC is back before resuming (all channels reconnect).
RECONNECT_SLEEP = 2.0
#: The PV whose CA connection stands for the IOC's.
LINK_PV = "Status:Clock"

#: Makes a safety record durable before the plan goes on: ``safety(kind, data)``
#: (e.g. :meth:`spm_bluesky.storage.durable.DurablePath.mark`).
SafetyLog = Callable[[str, Mapping[str, Any]], None]


class Next(Enum):
    """What the loop does after a scan run."""

    SCAN = "scan"
    CONDITION = "consecutive_bad"
    MOVE_AREA = "area_used_up"
    CRASH = "crash"
    LOST_CONTACT = "lost_contact"
    DONE = "done"


class _Session:
    """One session's devices, configuration and state; its methods are the plan's parts."""

    def __init__(self, stm: STM, assessor: Assessor, policy: Policy, config: SessionConfig,
                 state: SessionState, mask_file: Path | None, md: dict[str, Any],
                 safety: SafetyLog | None = None) -> None:
        self.stm, self.assessor, self.policy = stm, assessor, policy
        self.safety = safety
        self.config, self.state, self.mask_file, self.md = config, state, mask_file, md
        self.link = LinkMonitor(stm.prefix + LINK_PV)
        self.frame = GuardedScan(stm.scan, self.link, config.size, config.pixels)
        self.truth = GuardedReadable(stm.sim, self.link) if stm.simulated else None
        self.judge = AssessmentDevice()
        self.decision = VerdictDevice()
        self.fault = FaultDevice()
        self.pending_faults: list[dict[str, Any]] = []
        self.z_range = 0.0
        self.model_ids = {schema.MODEL_ASSESSOR: assessor.model_id,
                          schema.MODEL_POLICY: policy_model_id(policy)}

    # -- run metadata ---------------------------------------------------------------------

    def run_md(self, reason: str) -> dict[str, Any]:
        """Start-document keys every run of the session carries (docs/reference/data-model.md)."""
        md = {**self.md, schema.REASON: reason, schema.MODEL_IDS: self.model_ids,
              schema.AUTONOMY: self.config.as_md(), schema.AUTONOMY_RUN: self.state.runs}
        self.state.runs += 1
        return md

    def keep_mask(self) -> None:
        """Save the session's mask to its file, if it keeps one (a convenience copy: the
        documents hold every blocked disc)."""
        if self.mask_file is not None:
            self.state.mask.save(self.mask_file)

    def read_clock(self) -> MsgGenerator[None]:
        clock = yield from bps.rd(self.stm.status.clock)
        self.state.observe_clock(float(clock))

    # -- the parts of the loop ------------------------------------------------------------

    def start(self) -> MsgGenerator[None]:
        """Connect the soft devices, follow the link, approach if out of contact."""
        yield from ensure_connected(self.link, self.judge, self.decision, self.fault)
        yield from bps.wait_for([self.link.start])
        self.z_range = float((yield from bps.rd(self.stm.status.z_range)))
        yield from self.read_clock()
        contact = yield from bps.rd(self.stm.status.contact)
        if not contact:
            yield from approach(self.stm, self.state.session_uid, self.run_md("start"))
        yield from self.sync_area()

    def sync_area(self) -> MsgGenerator[None]:
        """Start a fresh mask if the instrument is over another area than the mask."""
        area_index = int((yield from bps.rd(self.stm.status.area_index)))
        if area_index != self.state.mask.area_index:
            self.state.new_area(area_index)

    def next_step(self) -> Next:
        """Why the scan loop must stop now, or SCAN."""
        if self.state.finished(self.config):
            return Next.DONE
        if self.state.consecutive_bad > self.config.bad_limit:
            return Next.CONDITION
        if self.state.mask.next_cell(margin=self.config.size / 2) is None:
            return Next.MOVE_AREA
        return Next.SCAN

    def scan_run(self) -> MsgGenerator[Next]:
        """One ``autonomous_scan`` run; returns what to do next."""
        run_md = yield from run_metadata(
            self.stm, schema.AUTONOMOUS_SCAN, {"size": self.config.size,
                                               "pixels": self.config.pixels},
            self.state.session_uid, self.run_md("scan"))
        outcome = [Next.SCAN]

        def body() -> MsgGenerator[None]:
            for _ in range(self.config.run_images):
                outcome[0] = self.next_step()
                if outcome[0] is not Next.SCAN:
                    return
                verdict = yield from self.image()
                if verdict is Verdict.CRASH:
                    outcome[0] = Next.CRASH
                    return
                if verdict is Verdict.LOST_CONTACT:
                    outcome[0] = Next.LOST_CONTACT
                    return
            outcome[0] = self.next_step()

        contact = SuspendBoolLow(ValueWatch(self.stm.status.contact),
                                 pre_plan=self.recover_contact,
                                 tripped_message="tunnelling contact lost: approaching again")
        ioc = SuspendBoolLow(ValueWatch(self.link.connected), sleep=RECONNECT_SLEEP,
                             post_plan=self.after_reconnect,
                             tripped_message=f"the IOC ({self.link.pv}) does not answer")
        # A checkpoint as the run's last message, so that a suspension tripped as
        # the run ends (before its suspenders are removed) rewinds nothing: otherwise it
        # replays the last image's messages after close_run and ends the session.
        yield from bpp.suspend_wrapper(
            bpp.run_wrapper(bpp.pchain(body(), bps.checkpoint()), md=run_md), [contact, ioc])
        self.keep_mask()
        return outcome[0]

    def image(self) -> MsgGenerator[Verdict]:
        """Scan, assess, judge and record one image (inside a scan run)."""
        config, state = self.config, self.state
        cell = state.mask.next_cell(margin=config.size / 2)
        assert cell is not None  # next_step() said SCAN: a free cell is left
        x, y = cell
        self.frame.target = (x, y)
        yield from bps.checkpoint()
        reading = yield from bps.trigger_and_read([self.frame])
        if self.stm.scan.image.name not in reading:
            # A suspender rewound inside trigger_and_read and the replay answered with an
            # empty reading: the detector holds the frame of the last take,
            # the one its saved event holds.
            reading = yield from bps.read(self.frame)
        yield from bps.checkpoint()
        # As assess_image, without its per-image ensure_connected: a rewind would replay
        # that message with an already awaited coroutine.
        image, frame_size = frame_from_reading(self.stm, reading)
        assessment = self.assessor.assess(image, frame_size)
        yield from bps.mv(*self.judge.settings(assessment))
        yield from bps.trigger_and_read([self.judge], name=schema.ASSESSMENT)
        # An image the assessor is unsure of says nothing about the tip: the belief stays.
        belief = (state.tip_belief if assessment.unsure
                  else update_belief(state.tip_belief, assessment.p_good, config))
        judgement = classify(image, belief, self.z_range, config, state.debris_retries,
                             assessment.unsure)
        verdict = judgement.verdict
        state.observe_clock(float(reading[self.stm.scan.clock.name]["value"]))
        state.record(verdict, x, y, judgement.radius, belief)
        d = self.decision
        yield from bps.mv(
            d.verdict, verdict.value, d.peak_to_peak, judgement.peak_to_peak,
            d.block_x, x, d.block_y, y, d.block_radius, judgement.radius,
            d.area_index, state.mask.area_index, d.clock, state.clock or 0.0,
            d.elapsed, state.elapsed, d.image, state.images, d.good_images, state.good_images,
            d.consecutive_bad, state.consecutive_bad, d.debris_retries, state.debris_retries,
            d.tip_belief, state.tip_belief)
        yield from bps.trigger_and_read([d], name=schema.DECISION)
        if self.truth is not None:
            yield from bps.trigger_and_read([self.truth], name=schema.TRUTH)
        yield from self.record_faults()
        if state.count_unsure(verdict, config.unsure_limit):
            yield from self.pause_for_person()
        return verdict

    def pause_for_person(self) -> MsgGenerator[None]:
        """Pause the session (resuming goes on): the assessor was unsure of
        ``unsure_limit`` images in a row, so a person should look at them."""
        logger.warning(
            "session %s paused: the assessor was unsure of %d images in a row (they are "
            "unlike the images it learnt from; the tip was not conditioned on them). Look at "
            "the last images (spm-bluesky report), then resume the session.",
            self.state.session_uid, self.config.unsure_limit)
        yield from bps.deferred_pause()
        yield from bps.checkpoint()

    def record_faults(self) -> MsgGenerator[None]:
        """Emit a ``fault`` event for each fault a suspender handled since the last image."""
        while self.pending_faults:
            fault = self.pending_faults.pop(0)
            if fault["radius"] > 0:
                self.state.mask.block_disc(fault["x"], fault["y"], fault["radius"])
            f = self.fault
            yield from bps.mv(f.kind, fault["kind"], f.x, fault["x"], f.y, fault["y"],
                              f.radius, fault["radius"], f.clock, fault["clock"],
                              f.crash_count, fault["crash_count"])
            yield from bps.trigger_and_read([f], name=schema.FAULT)

    def recover_contact(self) -> MsgGenerator[None]:
        """The contact suspender's pre_plan: note the fault, approach (ends a crash too)."""
        status = yield from bps.read(self.stm.status)
        crashed = bool(status[self.stm.status.crashed.name]["value"])
        x, y = self.frame.target
        clock = float(status[self.stm.status.clock.name]["value"])
        crash_count = int(status[self.stm.status.crash_count.name]["value"])
        if crashed:
            self.state.crashes += 1
            self.state.tip_belief = UNKNOWN_TIP
            if self.safety is not None:  # durable before the approach, which a kill may cut
                self.safety(CRASH_MARK, crash_mark(
                    self.state.session_uid, self.state.mask.area_index, x, y,
                    self.config.crash_radius, clock, crash_count))
        self.pending_faults.append({
            "kind": "crash" if crashed else "lost_contact", "x": x, "y": y,
            "radius": self.config.crash_radius if crashed else 0.0,
            "clock": clock, "crash_count": crash_count})
        yield from bps.trigger(self.stm.coarse.approach, wait=True)

    def after_reconnect(self) -> MsgGenerator[None]:
        """The IOC suspender's post_plan: note the outage (the frame settings follow)."""
        x, y = self.frame.target
        clock = yield from bps.rd(self.stm.status.clock)
        crash_count = yield from bps.rd(self.stm.status.crash_count)
        self.pending_faults.append({"kind": "ioc_disconnect", "x": x, "y": y, "radius": 0.0,
                                    "clock": float(clock), "crash_count": int(crash_count)})

    def condition(self) -> MsgGenerator[bool]:
        """A conditioning episode (``condition_tip``) on the session's mask; True if the
        session stays in this area: the tip ended good, or the episode stopped because the
        assessor was unsure of ``unsure_limit`` frames in a row (the session then pauses for
        a person, and scans on here once resumed)."""
        before = yield from bps.rd(self.stm.scan.frame_counter)
        outcome = yield from condition_tip(
            self.stm, self.policy, self.assessor, size=self.config.size,
            pixels=self.config.pixels, max_actions=self.config.max_actions,
            good_threshold=self.config.good_threshold, session_uid=self.state.session_uid,
            md=self.run_md(Next.CONDITION.value), mask=self.state.mask,
            safety=self.safety, crash_radius=self.config.crash_radius,
            unsure_limit=self.config.unsure_limit)
        after = yield from bps.rd(self.stm.scan.frame_counter)
        self.keep_mask()
        self.state.images += max(int(after) - int(before), 0)
        self.state.episodes += 1
        self.state.actions += int(outcome["actions"])
        self.state.crashes += int(outcome["crashes"])
        self.state.consecutive_bad = 0
        self.state.tip_belief = UNKNOWN_TIP
        self.frame.target = self.state.mask.position
        yield from self.read_clock()
        if outcome["unsure"]:
            yield from self.pause_for_person()
            return True
        return bool(outcome["success"])

    def move(self, reason: str) -> MsgGenerator[None]:
        """Coarse-move to a fresh approach area, with a fresh mask."""
        yield from move_area(self.stm, session_uid=self.state.session_uid,
                             md=self.run_md(reason))
        self.state.new_area(int((yield from bps.rd(self.stm.status.area_index))))
        self.keep_mask()
        self.state.consecutive_bad = 0
        self.state.debris_retries = 0
        yield from self.read_clock()

    def recover(self, reason: str) -> MsgGenerator[None]:
        """Withdraw (after a crash) and approach again."""
        if reason == Next.CRASH.value:
            yield from withdraw(self.stm, self.state.session_uid, self.run_md(reason))
        yield from approach(self.stm, self.state.session_uid, self.run_md(reason))
        yield from self.read_clock()

    def run(self) -> MsgGenerator[dict[str, Any]]:
        """The loop: scan runs, and between them whatever the last one asked for."""
        yield from self.start()
        while True:
            step = self.next_step()
            if step is Next.SCAN:
                step = yield from self.scan_run()
            if step is Next.DONE:
                break
            if step is Next.CONDITION:
                repaired = yield from self.condition()
                if not repaired:
                    yield from self.move("episode_failed")
            elif step is Next.MOVE_AREA:
                yield from self.move(step.value)
            elif step in (Next.CRASH, Next.LOST_CONTACT):
                yield from self.recover(step.value)
        yield from bps.wait_for([self.link.stop])
        return self.state.summary()


def autonomous_session(
    stm: STM,
    assessor: Assessor,
    policy: Policy,
    *,
    hours: float | None = None,
    images: int | None = None,
    session_uid: str | None = None,
    bad_limit: int = 10,
    size: float = 10e-9,
    pixels: int = 64,
    run_images: int = 50,
    keep_threshold: float = 0.5,
    good_threshold: float = 0.9,
    assessor_prior: float = 0.2,
    tip_hazard: float = 0.01,
    max_actions: int = 100,
    debris_threshold: float = 0.6e-9,
    debris_radius: float = 10e-9,
    crash_radius: float = 150e-9,
    unsure_limit: int = UNSURE_LIMIT,
    mask_path: str | None = None,
    resume_state: SessionState | None = None,
    md: dict[str, Any] | None = None,
    safety: SafetyLog | None = None,
) -> MsgGenerator[dict[str, Any]]:
    """Run DeepSPM's loop until ``hours`` of instrument time or ``images`` images are done.

    ``hours`` counts the instrument's clock (``Status:Clock``) from the session's start,
    across resumes; ``images`` counts every frame of the session, conditioning included.
    An image is kept when P(tip good), the assessor's p(good) filtered over the session's
    frames (:func:`~spm_bluesky.autonomy.rules.update_belief`, with ``assessor_prior``
    and ``tip_hazard``), is above ``keep_threshold``; after more than ``bad_limit`` bad
    images in a row a conditioning episode runs (``policy``, ending at p(good) >
    ``good_threshold`` or after ``max_actions``). Peak to peak over ``debris_threshold``
    (m) blocks ``debris_radius`` times the retry count; a crash blocks ``crash_radius``.
    An image the assessor is unsure of (``Assessment.unsure``) gets the verdict ``unsure``:
    it neither moves P(tip good) nor counts as bad, so it never starts conditioning; after
    ``unsure_limit`` of them in a row the session pauses (the RunEngine's pause, at a
    checkpoint) for a person, and resuming goes on.

    The session holds its approach-area mask in memory and hands it to ``condition_tip``;
    every blocked disc is in the documents. ``mask_path`` also keeps a copy of the mask in
    that file, saved after every run (checked writable before anything is written).
    ``resume_state`` continues that session (its ``session_uid``; the given one must match
    or be None). ``safety`` makes safety records durable before the instrument acts again
    (a crash and its exclusion zone, before the approach that follows). Every parameter is
    checked before any message. Returns the session's counters (``SessionState.summary``).
    """
    check_stm(stm)
    check_assessor(assessor)
    check_policy(policy)
    mask_file = check_mask_path(mask_path)
    if session_uid is not None and (not isinstance(session_uid, str) or not session_uid):
        raise ValueError(f"session_uid={session_uid!r} must be a non-empty string")
    if resume_state is not None:
        if not isinstance(resume_state, SessionState):
            raise TypeError("resume_state must be a SessionState (autonomy.state.rebuild)")
        if session_uid not in (None, resume_state.session_uid):
            raise ValueError(f"session_uid={session_uid!r} does not match the resumed session "
                             f"{resume_state.session_uid!r}")
    config = SessionConfig(
        hours=hours, images=images, bad_limit=bad_limit, size=size, pixels=pixels,
        run_images=run_images, keep_threshold=keep_threshold, good_threshold=good_threshold,
        assessor_prior=assessor_prior, tip_hazard=tip_hazard,
        max_actions=max_actions, debris_threshold=debris_threshold,
        debris_radius=debris_radius, crash_radius=crash_radius, unsure_limit=unsure_limit,
        policy=policy.name)
    if resume_state is None:
        clock = yield from bps.rd(stm.status.clock)
        area_index = yield from bps.rd(stm.status.area_index)
        x = yield from bps.rd(stm.scan.center_x)
        y = yield from bps.rd(stm.scan.center_y)
        state = SessionState(session_uid or uuid.uuid4().hex,
                             AreaMask(area_index=int(area_index), cell_size=CELL_SIZE,
                                      position=(float(x), float(y))))
        config = replace(config, start_clock=float(clock))
    else:
        state = resume_state
        previous = state.config or config
        config = replace(config, start_clock=previous.start_clock,
                         resumed=previous.resumed + 1)
    state.config = config
    session = _Session(stm, assessor, policy, config, state, mask_file, dict(md or {}), safety)
    return (yield from session.run())
