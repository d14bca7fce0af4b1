"""The instrument: piezo, feedback, coarse motor and clock around the sample and the tip.

All times are simulated seconds on :attr:`Instrument.clock`; every operation returns the
time it took so a server can pace itself (``Sim:TimeScale``). Everything random draws from
one generator seeded by ``seed``: the same seed and the same calls give the same images.
"""

from __future__ import annotations

import math
from dataclasses import replace
from enum import StrEnum

import numpy as np

from spm_bluesky.domain import limits
from spm_bluesky.domain.actions import ActionKind, TipAction
from spm_bluesky.twin import imaging
from spm_bluesky.twin.config import TwinConfig
from spm_bluesky.twin.imaging import Frame
from spm_bluesky.twin.sample import Features, Sample
from spm_bluesky.twin.tip import (
    TipClass,
    TipState,
    add_defect,
    apply_action,
    degraded_tip,
    flipped,
    good_tip,
    spontaneous_change,
)


class Fault(StrEnum):
    """Faults that can be injected for reliability tests (``Sim:Fault``)."""

    NONE = "none"
    LOSE_CONTACT = "lose_contact"
    CRASH = "crash"
    STALL = "stall"  # the controller stops answering commands: the server's concern


class InstrumentError(RuntimeError):
    """An operation the instrument cannot do in its present condition (e.g. no contact)."""


class Instrument:
    """The simulated STM: call :meth:`scan`, :meth:`pulse`, :meth:`dip`, :meth:`approach` ..."""

    def __init__(self, seed: int = 0, config: TwinConfig | None = None) -> None:
        self.seed = int(seed)
        self.config = config or TwinConfig()
        self.sample = Sample(self.seed, self.config.sample)
        self._rng = np.random.default_rng([self.seed, 7])
        self.tip: TipState = good_tip(self._rng, self.config.tip)
        self.clock = 0.0
        self.area_index = 0
        self.contact = True
        self.crashed = False
        self.crash_count = 0
        self.action_count = 0
        self.frame_count = 0
        #: Sample area damaged by conditioning actions and crashes so far (m^2).
        self.damage_area = 0.0
        self.fault = Fault.NONE
        self.z = self.config.instrument.z_after_approach
        self._approached_at = -1e6  # settled long ago: no creep at start
        self._new_drift()

    # -- state --------------------------------------------------------------------------

    @property
    def tip_class(self) -> TipClass:
        """The true tip class (for labels and evaluation only)."""
        return self.tip.tip_class(self.config.tip)

    def set_tip(self, state: TipState) -> None:
        """Replace the hidden tip state (tests and training episodes)."""
        self.tip = state

    def degrade_tip(self) -> TipState:
        """Destroy the tip on purpose, as DeepSPM's training mode did."""
        self.tip = degraded_tip(self._rng, self.config.tip)
        return self.tip

    def _new_drift(self) -> None:
        noise = self.config.noise
        self._drift_velocity = self._rng.normal(0.0, noise.drift_speed, 2)
        direction = self._rng.uniform(0, 2 * np.pi)
        self._creep = noise.creep_amplitude * np.array([math.cos(direction),
                                                         math.sin(direction)])
        self._approach_tilt = self._rng.normal(0.0, noise.tilt / 3, 2)

    def position_error(self, t: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Where the tip really is minus where it was sent (m), at times ``t``: creep + drift."""
        noise = self.config.noise
        since = np.maximum(np.asarray(t, dtype=float) - self._approached_at, 0.0)
        creep = np.exp(-since / noise.creep_time)
        drift = noise.drift_time * (1 - np.exp(-since / noise.drift_time))
        return (self._creep[0] * creep + self._drift_velocity[0] * drift,
                self._creep[1] * creep + self._drift_velocity[1] * drift)

    # -- imaging ------------------------------------------------------------------------

    def scan(self, frame: Frame) -> np.ndarray:
        """Scan one frame; return float32 heights (m), ``pixels x pixels``, row 0 scanned first."""
        limits.check_frame(frame.center_x, frame.center_y, frame.size, frame.pixels)
        limits.SCAN_SPEED.check("speed", frame.speed)
        limits.check_bias(frame.bias)
        limits.SCAN_SETPOINT.check("setpoint", frame.setpoint)
        n = frame.pixels
        if not self.contact:
            image = np.full((n, n), self.z) + self._rng.normal(0.0, 0.5e-12, (n, n))
        else:
            image = self._scan_in_contact(frame)
        self.clock += frame.duration
        self.frame_count += 1
        return image.astype(np.float32)

    def _scan_in_contact(self, frame: Frame) -> np.ndarray:
        cfg = self.config
        n = frame.pixels
        px = frame.pixel_size
        line_times = self.clock + (np.arange(n) + 0.5) * frame.line_time
        err_x, err_y = self.position_error(line_times)
        shifts = (err_x - err_x[0]) / px
        moving = np.abs(shifts).max() > 0.01  # drift within the frame worth resampling for
        margin = min(math.ceil(np.abs(shifts).max()) + 1, n) if moving else 0
        xs, ys = frame.axes()
        xs = np.concatenate([xs[0] - px * np.arange(margin, 0, -1), xs,
                             xs[-1] + px * np.arange(1, margin + 1)]) + err_x[0]
        ys = ys + err_y
        reach = 3e-9
        patch = self.sample.patch(self.area_index, xs[0] - reach, xs[-1] + reach,
                                  ys.min() - reach, ys.max() + reach)
        terraces = self.sample.terraces(self.area_index)
        topo = np.empty((n, len(xs)))
        for start, stop, state in self._tip_segments(n, frame.line_time):
            topo[start:stop] = imaging.topography(patch, terraces, state, xs, ys[start:stop],
                                                  cfg.sample.step_height, cfg.tip)
        if moving:
            topo = imaging.shift_rows(topo, shifts, margin)
        topo = imaging.feedback_response(topo, frame.line_time / 2 / n, cfg.noise)
        tilt_x = terraces.tilt[0] + self._approach_tilt[0]
        tilt_y = terraces.tilt[1] + self._approach_tilt[1]
        plane = tilt_x * (xs[margin:margin + n][None, :]) + tilt_y * ys[:, None]
        unstable = TipClass.UNSTABLE in self.tip.defects(cfg.tip)
        return imaging.add_noise(self.z + topo + plane, self._rng, cfg.noise,
                                 scale=2.0 if unstable else 1.0)

    def _tip_segments(self, lines: int, line_time: float) -> list[tuple[int, int, TipState]]:
        """Split a frame into runs of lines scanned with one tip configuration.

        Spontaneous degradation changes the tip for good; an unstable tip flips to a
        different configuration for a few lines and back (a streak).
        """
        cfg = self.config.tip
        p_degrade = line_time / cfg.mean_degrade_time
        u_degrade = self._rng.random(lines)
        u_flip = self._rng.random(lines)
        segments: list[tuple[int, int, TipState]] = []
        base = shown = self.tip
        start = 0
        flip_left = 0
        for line in range(lines):
            now = shown
            if flip_left > 0:
                flip_left -= 1
                if flip_left == 0:
                    now = base
            elif u_flip[line] < base.instability:
                now = flipped(base, self._rng)
                flip_left = int(self._rng.geometric(1 / 5))
            if u_degrade[line] < p_degrade:
                base = now = spontaneous_change(base, self._rng, cfg)
                flip_left = 0
            if now is not shown:
                if line > start:
                    segments.append((start, line, shown))
                start, shown = line, now
        segments.append((start, lines, shown))
        self.tip = base
        return segments

    # -- conditioning -------------------------------------------------------------------

    def pulse(self, x: float, y: float, bias: float, duration: float) -> float:
        """Apply a bias pulse at (x, y); returns the time taken (s)."""
        limits.ACTION_POSITION.check("x", x)
        limits.ACTION_POSITION.check("y", y)
        limits.PULSE_BIAS.check("bias", bias)
        limits.PULSE_TIME.check("duration", duration)
        self._require_contact()
        action = TipAction("pulse", ActionKind.PULSE, bias=bias, duration=duration)
        self.tip = apply_action(self.tip, action, self._rng, self.config.tip)
        strength = abs(bias) * (1 + 0.25 * math.log10(duration / 0.2))
        sigma = 0.2e-9 + 0.25e-9 * max(strength, 0.0) / 2.5
        sign = -1.0 if self._rng.random() < 0.5 else 1.0  # crater or deposit
        self._damage(x, y, sigma, sign * 0.05e-9 * max(strength, 0.5))
        self.action_count += 1
        elapsed = duration + self.config.instrument.pulse_overhead
        self.clock += elapsed
        return elapsed

    def dip(self, x: float, y: float, depth: float) -> float:
        """Push the tip ``depth`` into the sample at (x, y); may crash over debris."""
        limits.ACTION_POSITION.check("x", x)
        limits.ACTION_POSITION.check("y", y)
        limits.DIP_DEPTH.check("depth", depth)
        self._require_contact()
        self.action_count += 1
        elapsed = self.config.instrument.dip_time
        self.clock += elapsed
        local = self.local_height(x, y)
        chance = 0.02 * (depth / 5e-9) ** 2
        if depth + local > self.config.instrument.crash_height or self._rng.random() < chance:
            self._crash(x, y)
            return elapsed
        action = TipAction("dip", ActionKind.DIP, depth=depth)
        self.tip = apply_action(self.tip, action, self._rng, self.config.tip)
        sigma = 0.5e-9 + 0.35 * depth
        hole = 0.1e-9 + 0.15 * depth
        self._damage(x, y, sigma, -hole, rim=0.4 * hole)
        return elapsed

    def local_height(self, x: float, y: float, radius: float = 1.5e-9) -> float:
        """Tallest debris or damage within ``radius`` of (x, y), above the terrace (m)."""
        err_x, err_y = self.position_error(self.clock)
        cx, cy = x + float(err_x), y + float(err_y)
        patch = self.sample.patch(self.area_index, cx - radius, cx + radius,
                                  cy - radius, cy + radius)
        grid = np.linspace(-radius, radius, 7)
        heights = imaging.gaussian_sum(patch.other, cx + grid, cy + grid, 0.0)
        return float(max(heights.max(), 0.0))

    def _require_contact(self) -> None:
        if self.crashed:
            raise InstrumentError("the tip has crashed: withdraw and approach first")
        if not self.contact:
            raise InstrumentError("the tip is not in tunnelling contact: approach first")

    def _damage(self, x: float, y: float, sigma: float, amp: float, rim: float = 0.0) -> None:
        err_x, err_y = self.position_error(self.clock)
        cx, cy = x + float(err_x), y + float(err_y)
        xs, ys, sigmas, amps = [cx], [cy], [sigma], [amp]
        if rim:
            angles = np.arange(6) * np.pi / 3
            xs += list(cx + 1.8 * sigma * np.cos(angles))
            ys += list(cy + 1.8 * sigma * np.sin(angles))
            sigmas += [0.6 * sigma] * 6
            amps += [rim] * 6
        self.sample.add_damage(self.area_index, Features(np.array(xs), np.array(ys),
                                                         np.array(sigmas), np.array(amps)))
        self.damage_area += math.pi * (2 * sigma) ** 2

    def _crash(self, x: float, y: float) -> None:
        self.crashed = True
        self.contact = False
        self.crash_count += 1
        self.z = 0.0  # the feedback retracts fully
        for defect in (TipClass.BLUNT, TipClass.MULTI_APEX):
            self.tip = add_defect(self.tip, defect, self._rng, self.config.tip)
        self._damage(x, y, 4e-9, -2e-9, rim=1e-9)

    # -- coarse motion and faults -------------------------------------------------------

    def approach(self) -> float:
        """Coarse-approach into tunnelling range and wait for the piezo to settle."""
        if self.contact:
            return 0.0
        cfg = self.config.instrument
        elapsed = cfg.approach_time + cfg.settle_time
        self.clock += cfg.approach_time
        self._approached_at = self.clock
        self._new_drift()
        self.clock += cfg.settle_time
        self.contact, self.crashed = True, False
        self.z = cfg.z_after_approach + float(self._rng.normal(0.0, 5e-9))
        self.tip = replace(self.tip, length=0.0)
        return elapsed

    def withdraw(self) -> float:
        """Retract the tip out of tunnelling range."""
        elapsed = self.config.instrument.withdraw_time
        self.clock += elapsed
        self.contact = False
        self.z = 0.0 if self.crashed else limits.Z_RANGE
        return elapsed

    def move_area(self) -> float:
        """Withdraw, coarse-step to a fresh approach area and approach there."""
        elapsed = self.withdraw() + self.config.instrument.coarse_move_time
        self.clock += self.config.instrument.coarse_move_time
        self.area_index += 1
        return elapsed + self.approach()

    def inject_fault(self, fault: Fault) -> None:
        """Make a fault happen now (``Sim:Fault``)."""
        self.fault = fault
        if fault is Fault.LOSE_CONTACT:
            self.contact = False
            self.z = limits.Z_RANGE
        elif fault is Fault.CRASH:
            self._crash(0.0, 0.0)
