"""SIGKILL of an autonomous session at random moments, each followed by ``run --resume``.

Run: ``python benchmarks/soak_kills.py --kills 20 --seed S`` from the repository root.
Starts the IOC and Tiled in a temporary data directory (``spm-bluesky up``, twin seed
``S``) and an autonomous session (``spm-bluesky run``, heuristic policy, conditioning after
2 bad images in a row). Each kill targets one phase, in a seeded random order that covers
the four phases in turn:

- ``scanning``: an ``autonomous_scan`` run is open (seen in the journal);
- ``conditioning``: a ``condition_tip`` run is open (the tip is worn on purpose,
  ``Sim:Degrade``, every 5 s of scanning until one is);
- ``crash_approach``: a crash is injected (``Sim:Fault``) while a scan run is open; the kill
  comes once its crash mark is durable and while ``Status:Contact`` still reads 0 (the
  approach after the crash);
- ``coarse_move``: a ``move_area`` run is open (the session moves when an area is used up or
  an episode failed; a crash a second while it scans uses the area up).

For each phase the session is killed (SIGKILL) a random moment after the phase began, while
it still holds, and then resumed (``run --resume``) until the next kill; after the last kill
the session is resumed to ``--final-images`` more images and ends. ``Sim:TimeScale`` is
``--time-scale`` (coarse moves and approaches take real time, so a kill can land in them)
and twice that while a crash is awaited.

The journal is followed as it is written, so every document the killed process made durable
is known; the checks use it and Tiled at the end. Per kill: ``images before`` (frames
journaled when it was killed), ``after`` (the images of the session the resumed process
rebuilt: :func:`~spm_bluesky.autonomy.state.rebuild`, as ``run --resume`` does), ``lost``
(journaled images Tiled does not hold at the end, by content), ``dup`` (images of the session
Tiled holds more than once, by content), ``counters`` (whether the rebuilt crashes, actions,
episodes and images equal what the journal holds) and ``violations``: frames of the resumed
leg inside a disc used before the kill or a crash zone recorded before it, and its action
spots inside such a crash zone. At the end every run in Tiled must be closed.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import math
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spm_bluesky import schema
from spm_bluesky.autonomy.rules import Verdict
from spm_bluesky.autonomy.state import rebuild
from spm_bluesky.services.ca_client import read, write
from spm_bluesky.services.launch import UpOptions, client_ca_env, down, environ_set, up
from spm_bluesky.storage import Disc, connect, read_image_stream, runs_by_session
from spm_bluesky.storage.journal import Position, RecordKind, journal_dir, read_records
from spm_bluesky.storage.journal_runs import JournalRun

PHASES = ("scanning", "conditioning", "crash_approach", "coarse_move")
#: The plan of the open run that marks a phase.
PHASE_PLANS = {"scanning": schema.AUTONOMOUS_SCAN, "conditioning": schema.CONDITION_TIP,
               "coarse_move": schema.MOVE_AREA}
#: Longest random wait after a phase began before the kill (s), per phase.
MAX_DELAY = {"scanning": 2.0, "conditioning": 1.5, "crash_approach": 0.6, "coarse_move": 0.8}
#: The runs that scan frames.
IMAGE_PLANS = (schema.AUTONOMOUS_SCAN, schema.CONDITION_TIP)
BAD_LIMIT = 2
RUN_IMAGES = 20
#: How long to wait for a phase before giving up on it (s).
PHASE_TIMEOUT = 240.0


def digest(image: np.ndarray) -> str:
    """Hash of one frame's float32 values."""
    return hashlib.sha1(np.ascontiguousarray(image, dtype=np.float32).tobytes()).hexdigest()


@dataclass
class Followed:
    """One run as journaled so far: its records and its images' hashes (last take)."""

    run: JournalRun
    leg: int
    hashes: dict[int, str] = field(default_factory=dict)


class Follower:
    """Reads the journal as it grows (from where it stopped), run by run, marks too."""

    def __init__(self, directory: Path, session: str | None = None) -> None:
        self.directory = directory
        self.session = session
        self.position: Position | None = None
        self.runs: dict[str, Followed] = {}
        self.marks: list[dict[str, Any]] = []
        self._descriptors: dict[str, tuple[str, str]] = {}

    def poll(self) -> None:
        """Take every whole record written since the last call."""
        for record in read_records(self.directory, self.position):
            self.position = record.end
            if record.kind is RecordKind.MARK:
                if record.body.get(schema.SESSION_UID) == self.session:
                    self.marks.append(record.body)
                continue
            self._document(record.name, record.body)

    def _document(self, name: str, doc: dict[str, Any]) -> None:
        if name == "start":
            if self.session and doc.get(schema.SESSION_UID) == self.session:
                leg = int(doc[schema.AUTONOMY]["resumed"])
                self.runs[doc["uid"]] = Followed(JournalRun(doc), leg)  # type: ignore[arg-type]
            return
        if name == "descriptor":
            self._descriptors[doc["uid"]] = (doc["run_start"], doc.get("name", ""))
            uid = doc["run_start"]
        elif name == "event":
            uid, stream = self._descriptors.get(doc["descriptor"], ("", ""))
            image = doc["data"].get(schema.SCAN_IMAGE)
            if uid in self.runs and stream == schema.PRIMARY and image is not None:
                self.runs[uid].hashes[int(doc["seq_num"])] = digest(image)
        else:
            uid = doc.get("run_start", "")
        if uid in self.runs:
            self.runs[uid].run.add(name, doc)

    def open_plan(self, leg: int) -> tuple[str, JournalRun] | None:
        """(plan name, run) of the run of ``leg`` that is open, if one is."""
        for followed in reversed(self.runs.values()):
            if followed.leg == leg and followed.run.stop is None:
                return followed.run.plan_name or "", followed.run
        return None

    def frames(self, leg: int | None = None) -> int:
        return sum(len(f.hashes) for f in self.runs.values() if leg is None or f.leg == leg)

    def hashes(self, up_to_leg: int) -> set[str]:
        return {h for f in self.runs.values() if f.leg <= up_to_leg for h in f.hashes.values()}

    def crash_keys(self) -> set[tuple[int, float]]:
        """(crash count, clock) of every crash recorded (marks and ``fault`` events)."""
        keys = {(int(m["crash_count"]), round(float(m["clock"]), 6)) for m in self.marks}
        keys |= {(f.crash_count, round(f.clock, 6)) for r in self.runs.values()
                 for f in r.run.faults() if f.kind == Verdict.CRASH.value}
        return keys

    def counters(self) -> dict[str, int]:
        """What the journal holds: images, crashes, actions, episodes."""
        runs = [f.run for f in self.runs.values() if f.run.plan_name in IMAGE_PLANS]
        judged = sum(d.verdict == Verdict.CRASH.value for r in runs for d in r.decisions())
        return {"images": self.frames(), "crashes": len(self.crash_keys()) + judged,
                "actions": sum(len(r.steps()) for r in runs),
                "episodes": sum(r.plan_name == schema.CONDITION_TIP for r in runs)}

    def used(self, up_to_leg: int, size: float) -> tuple[list[Disc], list[Disc]]:
        """(used discs, crash zones) recorded by the legs up to ``up_to_leg``."""
        runs = [f.run for f in self.runs.values() if f.leg <= up_to_leg
                and f.run.plan_name in IMAGE_PLANS]
        used = [Disc(fr.area, fr.x, fr.y, size / 2) for r in runs for fr in r.frames()]
        used += [s.disc() for r in runs for s in r.steps()]
        zones = [Disc(int(m["area"]), m["x"], m["y"], m["radius"]) for m in self.marks]
        for run in runs:
            area = run.frames()[-1].area if run.frames() else None
            zones += [Disc(area, f.x, f.y, f.radius) for f in run.faults()
                      if f.radius > 0 and area is not None]
        return used, zones


def inside(area: int, x: float, y: float, discs: list[Disc]) -> bool:
    return any(d.area == area and math.hypot(x - d.x, y - d.y) < d.radius - 1e-12
               for d in discs)


@dataclass
class Kill:
    """One kill and what the checks found."""

    phase: str
    at: float
    images_before: int
    images_after: int = -1
    lost: int = -1
    duplicated: int = -1
    counters_ok: bool = False
    violations: int = -1
    spot_violations: int = -1
    leg: int = 0
    used: list[Disc] = field(default_factory=list, repr=False)
    zones: list[Disc] = field(default_factory=list, repr=False)
    hashes: set[str] = field(default_factory=set, repr=False)


class Soak:
    """The services, the session process and the kills (see the module docstring)."""

    def __init__(self, data_dir: Path, seed: int, time_scale: float,
                 log: Callable[[str], None] = print) -> None:
        self.data_dir, self.seed, self.time_scale, self.log = data_dir, seed, time_scale, log
        self.rng = random.Random(seed)
        self.state, _ = up(UpOptions(data_dir=data_dir, seed=seed, time_scale=time_scale,
                                     console=False))
        self.client = connect(self.state.tiled_uri, self.state.api_key)
        self.journal = journal_dir(data_dir)
        self.follower = Follower(self.journal)
        self.session: str | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.leg = -1
        self.kills: list[Kill] = []
        self.size = 10e-9

    # -- the session process --------------------------------------------------------------

    def start(self, *args: str) -> None:
        """Start the next leg (``spm-bluesky run``, resuming the session after the first)."""
        self.leg += 1
        log = self.data_dir / f"leg-{self.leg}.log"
        resume = ("--resume", self.session) if self.session else ()
        command = [sys.executable, "-m", "spm_bluesky", "run", "--data-dir", str(self.data_dir),
                   "--policy", "heuristic", "--run-images", str(RUN_IMAGES), "--bad-limit",
                   str(BAD_LIMIT), "--seed", str(self.seed), *resume, *args]
        with open(log, "w") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        self.leg_started = time.monotonic()
        while self.session is None:
            for line in log.read_text().splitlines():
                if line.startswith("session "):
                    self.session = self.follower.session = line.split()[1]
            self._alive()
            time.sleep(0.1)

    def _alive(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            log = self.data_dir / f"leg-{self.leg}.log"
            raise RuntimeError(f"leg {self.leg} ended early:\n{log.read_text()[-3000:]}")

    def pv(self, name: str, value: Any = None) -> Any:
        """Read (value None) or write one of the IOC's PVs."""
        with environ_set(client_ca_env(self.state.epics_env)):
            if value is None:
                return read(self.state.prefix + name).data[0]
            return write(self.state.prefix + name, value, notify=True)

    def wait(self, condition: Callable[[], bool], timeout: float = PHASE_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.follower.poll()
            if condition():
                return
            self._alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"leg {self.leg}: the awaited phase did not come")
            time.sleep(0.05)

    # -- the phases -----------------------------------------------------------------------

    def _in_plan(self, phase: str) -> bool:
        open_run = self.follower.open_plan(self.leg)
        if open_run is None or open_run[0] != PHASE_PLANS[phase]:
            return False
        return phase == "coarse_move" or bool(open_run[1].frames())

    def _nudge(self, phase: str) -> Callable[[], bool]:
        """A wait condition for ``phase`` that also brings it about: a worn tip
        (``Sim:Degrade``) every 5 s of scanning for conditioning; for a coarse move a crash
        every 0.5 s while the session scans or conditions (each crash blocks a disc of
        150 nm, until the area is used up)."""
        nudge = {"conditioning": ("Sim:Degrade", 1, 5.0, ("scanning",)),
                 "coarse_move": ("Sim:Fault", "crash", 0.5,
                                 ("scanning", "conditioning"))}.get(phase)
        last = [time.monotonic(), self.follower.frames()]

        def condition() -> bool:
            if self._in_plan(phase):
                return True
            # Only once the session took 2 more frames: a crash during the retake of the
            # frame a crash cut off would hold the session on one spot.
            if nudge is not None and time.monotonic() - last[0] > nudge[2] \
                    and self.follower.frames() >= last[1] + 2 \
                    and any(self._in_plan(p) for p in nudge[3]) \
                    and int(self.pv("Status:Contact")):
                self.pv(nudge[0], nudge[1])
                last[:] = [time.monotonic(), self.follower.frames()]
            return False
        return condition

    def reach(self, phase: str) -> Callable[[], bool]:
        """Wait until the session is in ``phase``; the test that it still is."""
        if phase in PHASE_PLANS:
            self.wait(self._nudge(phase))
            return lambda: self._in_plan(phase)
        # crash_approach: inject a crash while a scan run images, await its durable mark.
        self.wait(lambda: self._in_plan("scanning") and self.follower.frames(self.leg) >= 3)
        marks = len(self.follower.marks)
        self.pv("Sim:TimeScale", 2 * self.time_scale)
        self.pv("Sim:Fault", "crash")
        self.wait(lambda: len(self.follower.marks) > marks, timeout=120.0)
        return lambda: int(self.pv("Status:Contact")) == 0

    def kill_in(self, phase: str) -> Kill:
        """Reach ``phase``, wait a random moment, SIGKILL the session while still in it."""
        assert self.process is not None
        while True:
            still = self.reach(phase)
            time.sleep(self.rng.uniform(0.0, MAX_DELAY[phase]))
            self.follower.poll()
            if still():
                self.process.send_signal(signal.SIGKILL)
                at = time.monotonic() - self.leg_started
                self.process.wait(30)
                break
        self.pv("Sim:TimeScale", self.time_scale)
        self.follower.poll()
        used, zones = self.follower.used(self.leg, self.size)
        kill = Kill(phase, at, self.follower.frames(), leg=self.leg, used=used, zones=zones,
                    hashes=self.follower.hashes(self.leg))
        assert self.session is not None
        state = rebuild(self.client, self.session, journal=self.journal)  # as --resume does
        rebuilt = {"images": state.images, "crashes": state.crashes, "actions": state.actions,
                   "episodes": state.episodes}
        kill.images_after = state.images
        kill.counters_ok = rebuilt == self.follower.counters()
        if not kill.counters_ok:
            self.log(f"counters after kill {len(self.kills) + 1}: rebuilt {rebuilt}, "
                     f"journal {self.follower.counters()}")
        self.kills.append(kill)
        return kill

    # -- the checks -----------------------------------------------------------------------

    def violations(self, kill: Kill) -> tuple[int, int]:
        """Frames of the next leg in a used disc or a crash zone; its action spots in a
        crash zone."""
        runs = [f.run for f in self.follower.runs.values() if f.leg == kill.leg + 1
                and f.run.plan_name in IMAGE_PLANS]
        frames = [fr for r in runs for fr in r.frames()
                  if inside(fr.area, fr.x, fr.y, kill.used + kill.zones)]
        spots = [s for r in runs for s in r.steps() if inside(s.area, s.x, s.y, kill.zones)]
        for item in frames + spots:
            self.log(f"violation after kill at leg {kill.leg}: {item}")
        return len(frames), len(spots)

    def stored(self) -> tuple[Counter[str], list[Any]]:
        """Hashes of the session's images in Tiled (with multiplicity) and its runs."""
        assert self.session is not None
        runs = list(runs_by_session(self.client, self.session).values())
        hashes: Counter[str] = Counter()
        for run in runs:
            if run.metadata["start"][schema.PLAN_NAME] in IMAGE_PLANS:
                hashes.update(digest(image) for image in read_image_stream(run).images)
        return hashes, runs

    def finish(self, more_images: int) -> dict[str, Any]:
        """Resume to ``more_images`` more images, wait for Tiled, fill in every kill's row."""
        target = self.kills[-1].images_after + more_images if self.kills else more_images
        self.start("--images", str(target))
        assert self.process is not None
        code = self.process.wait(600)
        self.follower.poll()
        if code != 0:
            raise RuntimeError((self.data_dir / f"leg-{self.leg}.log").read_text()[-3000:])
        hashes, runs = self.stored()
        journaled = self.follower.hashes(self.leg)
        for kill in self.kills:
            kill.lost = len(kill.hashes - set(hashes))
            kill.duplicated = sum(1 for h in kill.hashes if hashes[h] > 1)
            kill.violations, kill.spot_violations = self.violations(kill)
        left_open = [r.metadata["start"]["uid"] for r in runs if not r.metadata.get("stop")]
        return {"session": self.session, "images": self.follower.frames(),
                "stored": sum(hashes.values()), "distinct": len(hashes),
                "missing": len(journaled - set(hashes)), "left_open": len(left_open),
                "final": self.follower.counters(),
                "aborted": sum(r.metadata["stop"]["exit_status"] == "abort" for r in runs
                               if r.metadata.get("stop"))}

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(30)
        down(self.data_dir)


def schedule(kills: int, seed: int, phases: Sequence[str] = PHASES) -> list[str]:
    """The phase of each kill: every one of ``phases`` in turn, in a seeded order per
    round."""
    unknown = set(phases) - set(PHASES)
    if unknown or not phases:
        raise ValueError(f"phases must be some of {PHASES}, got {tuple(phases)}")
    rng = random.Random(seed)
    order: list[str] = []
    while len(order) < kills:
        block = list(phases)
        rng.shuffle(block)
        order += block
    return order[:kills]


@contextlib.contextmanager
def soak(data_dir: Path, seed: int, time_scale: float,
         log: Callable[[str], None] = print) -> Iterator[Soak]:
    """The services up in ``data_dir``; down (and the session killed) on leaving."""
    run = Soak(data_dir, seed, time_scale, log)
    try:
        yield run
    finally:
        run.close()


def run_soak(data_dir: Path, kills: int, seed: int, *, time_scale: float = 0.004,
             final_images: int = 30, budget_s: float | None = None,
             log: Callable[[str], None] = print,
             phases: Sequence[str] = PHASES) -> tuple[list[Kill], dict[str, Any]]:
    """Kill the session ``kills`` times in ``phases`` (fewer if ``budget_s`` runs out
    first, but each phase once), resume after each, and check; the kills and the totals."""
    t0 = time.monotonic()
    with soak(data_dir, seed, time_scale, log) as run:
        run.start("--images", "1000000")
        for number, phase in enumerate(schedule(kills, seed, phases), 1):
            if number > 1:
                run.start("--images", "1000000")
            kill = run.kill_in(phase)
            log(f"kill {number}: {phase} at {kill.at:.1f} s, {kill.images_before} images")
            elapsed = time.monotonic() - t0
            if budget_s is not None and number >= len(phases) and elapsed > budget_s:
                break
        totals = run.finish(final_images)
        return run.kills, totals


def table(kills: list[Kill], totals: dict[str, Any]) -> str:
    """The per-kill table and the totals, as Markdown."""
    lines = ["| kill | phase | time in leg (s) | images before | after (rebuilt) | lost | "
             "duplicated | counters | violations: frames | spots |",
             "|---:|---|---:|---:|---:|---:|---:|---|---:|---:|"]
    for number, k in enumerate(kills, 1):
        lines.append(f"| {number} | {k.phase} | {k.at:.1f} | {k.images_before} | "
                     f"{k.images_after} | {k.lost} | {k.duplicated} | "
                     f"{'right' if k.counters_ok else 'WRONG'} | {k.violations} | "
                     f"{k.spot_violations} |")
    lines.append("")
    lines.append(", ".join(f"{key}: {value}" for key, value in totals.items()))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-scale", type=float, default=0.004)
    parser.add_argument("--final-images", type=int, default=30)
    args = parser.parse_args()
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="soak-kills-") as tmp:
        kills, totals = run_soak(Path(tmp) / "data", args.kills, args.seed,
                                 time_scale=args.time_scale, final_images=args.final_images)
    print(table(kills, totals))
    print(f"wall time {time.monotonic() - t0:.0f} s")


if __name__ == "__main__":
    main()
