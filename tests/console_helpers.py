"""Helpers of the console's tests: a large stored session written fast, a console served on
a free loopback port, and a headless Chromium.

:func:`store_session` writes a session the way the autonomous loop stores one (runs of
``run_images`` frames, each with its ``assessment``, ``decision`` and ``truth`` events, a
conditioning episode now and then) through the project's Tiled writer, from documents made
with event-model (one event page per stream); frames are small.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import uvicorn
from event_model import compose_run

from spm_bluesky import schema
from spm_bluesky.autonomy.rules import Verdict
from spm_bluesky.console import ConsoleConfig, create_app
from spm_bluesky.console.server import bind, url_of
from spm_bluesky.protocols import CLASSES
from spm_bluesky.storage import make_writer

#: Debian's browser: the tests drive it, never a downloaded one.
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
#: Where the tests keep their screenshots (the repository's ``artifacts/``, not committed).
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "console"
#: The stored session's first instrument clock and the seconds between two frames.
START_CLOCK = 1000.0
FRAME_SECONDS = 30.0
#: The stored session's thresholds (as a session records them in ``autonomy``).
KEEP_THRESHOLD = 0.9
DEBRIS_THRESHOLD = 2e-9


def _key(dtype: str, shape: tuple[int, ...] = (), **extra: Any) -> dict[str, Any]:
    return {"source": "test", "dtype": dtype, "shape": list(shape), **extra}


def _frame_keys(pixels: int) -> dict[str, dict[str, Any]]:
    return {
        schema.SCAN_IMAGE: _key("array", (pixels, pixels), dtype_numpy="<f4", units="m"),
        schema.SCAN_CLOCK: _key("number"), schema.SCAN_AREA_INDEX: _key("integer"),
        schema.SCAN_CENTER_X: _key("number"), schema.SCAN_CENTER_Y: _key("number"),
        schema.SCAN_SIZE: _key("number")}


ASSESSMENT_KEYS = {**{schema.assessment_p(c): _key("number") for c in CLASSES},
                   schema.ASSESSMENT_LABEL: _key("string"),
                   schema.ASSESSMENT_MODEL_ID: _key("string"),
                   schema.ASSESSMENT_UNSURE_SCORE: _key("number")}
DECISION_KEYS = {key: _key("number") for key in (
    schema.DECISION_BLOCK_X, schema.DECISION_BLOCK_Y, schema.DECISION_BLOCK_RADIUS,
    schema.DECISION_CLOCK, schema.DECISION_ELAPSED, schema.DECISION_TIP_BELIEF,
    schema.DECISION_PEAK_TO_PEAK)} | {key: _key("integer") for key in (
    schema.DECISION_AREA_INDEX, schema.DECISION_IMAGE, schema.DECISION_GOOD_IMAGES,
    schema.DECISION_CONSECUTIVE_BAD, schema.DECISION_DEBRIS_RETRIES)} | {
    schema.DECISION_VERDICT: _key("string")}
TRUTH_KEYS = {schema.SIM_TIP_STATE: _key("string")}
ACTION_KEYS = {schema.STEP_ACTION: _key("string"), schema.STEP_ACTION_INDEX: _key("integer"),
               schema.STATUS_CLOCK: _key("number"), schema.STATUS_AREA_INDEX: _key("integer"),
               schema.STATUS_CRASH_COUNT: _key("integer"), schema.STEP_SPOT_X: _key("number"),
               schema.STEP_SPOT_Y: _key("number"),
               schema.STEP_FORBIDDEN_RADIUS: _key("number")}


@dataclass
class StoredSession:
    """What :func:`store_session` wrote: the session uid, images, runs, verdict counts."""

    uid: str
    images: int = 0
    runs: int = 0
    verdicts: dict[str, int] = field(default_factory=dict)
    episodes: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class _PlannedRun:
    """One run of the synthetic session: its kind, number, approach area, first image."""

    index: int
    kind: str
    area: int
    first_image: int
    images: int


def _verdict(rng: np.random.Generator, p_good: float) -> str:
    roll = rng.uniform()
    if roll < 0.03:
        return Verdict.DEBRIS
    if roll < 0.04:
        return Verdict.UNSURE
    if roll < 0.045:
        return Verdict.CRASH
    return Verdict.KEPT if p_good > KEEP_THRESHOLD else Verdict.BAD


class _RunWriter:
    """Writes planned runs of one session (documents from event-model, one event page per
    stream) through a Tiled writer of its own."""

    def __init__(self, client: Any, metadata: dict[str, Any], pixels: int, seed: int) -> None:
        self.writer = make_writer(client, batch_size=100_000)
        self.metadata = metadata
        self.pixels = pixels
        self.seed = seed

    def write(self, plan: _PlannedRun) -> dict[str, int]:
        """Write one run; its verdict counts."""
        rng = np.random.default_rng((self.seed, plan.index))
        run = compose_run(metadata={**self.metadata, schema.PLAN_NAME: plan.kind,
                                    schema.AUTONOMY_RUN: plan.index})
        self.writer("start", run.start_doc)
        clocks = [START_CLOCK + FRAME_SECONDS * (plan.first_image + i + 1)
                  for i in range(plan.images)]
        frames = [self._frame(rng, plan.area, clock) for clock in clocks]
        judged = [_assessment(rng) for _ in frames]
        streams: dict[str, list[dict[str, Any]]] = {schema.PRIMARY: frames,
                                                    schema.ASSESSMENT: judged}
        keys = {schema.PRIMARY: _frame_keys(self.pixels), schema.ASSESSMENT: ASSESSMENT_KEYS}
        verdicts: dict[str, int] = {}
        if plan.kind == schema.AUTONOMOUS_SCAN:
            decided = []
            for i, (frame, assessment) in enumerate(zip(frames, judged, strict=True)):
                p_good = assessment[schema.ASSESSMENT_P_GOOD]
                verdict = _verdict(rng, p_good)
                verdicts[verdict] = verdicts.get(verdict, 0) + 1
                decided.append(_decision(frame, verdict, p_good, plan.first_image + i + 1))
            streams[schema.DECISION] = decided
            streams[schema.TRUTH] = [{schema.SIM_TIP_STATE: CLASSES[int(rng.integers(
                len(CLASSES)))]} for _ in frames]
            keys |= {schema.DECISION: DECISION_KEYS, schema.TRUTH: TRUTH_KEYS}
        else:
            verdicts["conditioning"] = len(frames)
            streams[schema.ACTION] = [_step(i, clocks[i + 1] - 1.0, plan.area)
                                      for i in range(len(frames) - 1)]
            keys[schema.ACTION] = ACTION_KEYS
        for name, rows in streams.items():
            bundle = run.compose_descriptor(name=name, data_keys=keys[name])
            self.writer("descriptor", bundle.descriptor_doc)
            now = time.time()
            self.writer("event_page", bundle.compose_event_page(
                data={key: [row[key] for row in rows] for key in keys[name]},
                timestamps={key: [now] * len(rows) for key in keys[name]},
                seq_num=list(range(1, len(rows) + 1)), validate=False))
        self.writer("stop", run.compose_stop())
        return verdicts

    def _frame(self, rng: np.random.Generator, area: int, clock: float) -> dict[str, Any]:
        grid = np.linspace(0, 2 * np.pi, self.pixels, dtype=np.float32)
        wave = np.sin(grid[None, :] * rng.uniform(1, 4)) * np.cos(grid[:, None] * 2)
        noise = rng.normal(0, 0.1, (self.pixels, self.pixels))
        return {schema.SCAN_IMAGE: ((wave + noise) * 1e-10).astype(np.float32),
                schema.SCAN_CLOCK: clock, schema.SCAN_AREA_INDEX: area,
                schema.SCAN_CENTER_X: float(rng.uniform(-4e-7, 4e-7)),
                schema.SCAN_CENTER_Y: float(rng.uniform(-4e-7, 4e-7)),
                schema.SCAN_SIZE: 2e-8}


def _assessment(rng: np.random.Generator) -> dict[str, Any]:
    p = rng.dirichlet(np.ones(len(CLASSES)) * 0.6)
    data: dict[str, Any] = {schema.assessment_p(c): float(v) for c, v in zip(
        CLASSES, p, strict=True)}
    data[schema.ASSESSMENT_LABEL] = CLASSES[int(np.argmax(p))]
    data[schema.ASSESSMENT_MODEL_ID] = "assessor-test"
    data[schema.ASSESSMENT_UNSURE_SCORE] = float(rng.uniform(0, 100))
    return data


def _decision(frame: dict[str, Any], verdict: str, p_good: float, image: int
              ) -> dict[str, Any]:
    clock = frame[schema.SCAN_CLOCK]
    return {schema.DECISION_VERDICT: verdict,
            schema.DECISION_AREA_INDEX: frame[schema.SCAN_AREA_INDEX],
            schema.DECISION_BLOCK_X: frame[schema.SCAN_CENTER_X],
            schema.DECISION_BLOCK_Y: frame[schema.SCAN_CENTER_Y],
            schema.DECISION_BLOCK_RADIUS: 1e-8, schema.DECISION_CLOCK: clock,
            schema.DECISION_ELAPSED: clock - START_CLOCK, schema.DECISION_IMAGE: image,
            schema.DECISION_GOOD_IMAGES: 0, schema.DECISION_CONSECUTIVE_BAD: 0,
            schema.DECISION_DEBRIS_RETRIES: 0, schema.DECISION_TIP_BELIEF: p_good,
            schema.DECISION_PEAK_TO_PEAK: 3e-9 if verdict == Verdict.DEBRIS else 5e-10}


def _step(index: int, clock: float, area: int) -> dict[str, Any]:
    return {schema.STEP_ACTION: "dip" if index % 2 else "pulse",
            schema.STEP_ACTION_INDEX: index % 2, schema.STATUS_CLOCK: clock,
            schema.STATUS_AREA_INDEX: area, schema.STATUS_CRASH_COUNT: 0,
            schema.STEP_SPOT_X: 0.0, schema.STEP_SPOT_Y: 0.0,
            schema.STEP_FORBIDDEN_RADIUS: 5e-9}


def _plan(images: int, run_images: int, episode_every: int,
          episode_images: int) -> list[_PlannedRun]:
    """The runs of a session of at least ``images`` images, in order."""
    planned: list[_PlannedRun] = []
    count = scans = 0
    while count < images:
        area = scans // 100
        size = min(run_images, images - count)
        planned.append(_PlannedRun(len(planned), schema.AUTONOMOUS_SCAN, area, count, size))
        count += size
        scans += 1
        if scans % episode_every == 0 and count < images:
            planned.append(_PlannedRun(len(planned), schema.CONDITION_TIP, area, count,
                                       episode_images))
            count += episode_images
    return planned


def store_session(client: Any, images: int, *, run_images: int = 50, pixels: int = 16,
                  episode_every: int = 20, seed: int = 0) -> StoredSession:
    """Store a session of at least ``images`` images into Tiled through the project's writer:
    ``autonomous_scan`` runs of ``run_images`` frames of ``pixels`` square, a conditioning
    episode of four images every ``episode_every`` scan runs. Returns what was stored.

    One run at a time: Tiled's SQLite catalog answers 500 to concurrent appends."""
    started = time.perf_counter()
    uid = str(uuid.uuid4())
    metadata = {
        schema.SESSION_UID: uid, schema.TWIN_SEED: seed,
        schema.MODEL_IDS: {schema.MODEL_ASSESSOR: "assessor-test",
                           schema.MODEL_POLICY: "policy-test"},
        schema.AUTONOMY: {schema.AUTONOMY_START_CLOCK: START_CLOCK,
                          "keep_threshold": KEEP_THRESHOLD, "good_threshold": KEEP_THRESHOLD,
                          "debris_threshold": DEBRIS_THRESHOLD}}
    writer = _RunWriter(client, metadata, pixels, seed)
    stored = StoredSession(uid)
    for plan in _plan(images, run_images, episode_every, 4):
        verdicts = writer.write(plan)
        stored.runs += 1
        stored.images += plan.images
        stored.episodes += plan.kind == schema.CONDITION_TIP
        for verdict, count in verdicts.items():
            stored.verdicts[verdict] = stored.verdicts.get(verdict, 0) + count
    stored.seconds = time.perf_counter() - started
    return stored


#: Seconds an HTTP request of a test may take (the first read of a session, on a loaded machine).
HTTP_TIMEOUT_S = 60.0


@dataclass
class RunningConsole:
    """A console served in a thread of this process: its URL and configuration."""

    url: str
    config: ConsoleConfig
    server: uvicorn.Server

    def headers(self) -> dict[str, str]:
        """The header that carries the key."""
        return {"Authorization": f"Apikey {self.config.api_key}"}

    def http(self, key: bool = True) -> httpx.Client:
        """A client of the console, with the key in its header unless not."""
        return httpx.Client(base_url=self.url, timeout=HTTP_TIMEOUT_S,
                            headers=self.headers() if key else {})


@contextlib.contextmanager
def console_running(tiled_uri: str, api_key: str, data_dir: Path | None = None
                    ) -> Iterator[RunningConsole]:
    """Serve a console over ``tiled_uri`` on a free loopback port for the block."""
    config = ConsoleConfig(tiled_uri, api_key, data_dir)
    sock = bind(config)
    server = uvicorn.Server(uvicorn.Config(create_app(config), log_level="warning",
                                           access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the console did not start within 30 s")
        time.sleep(0.02)
    try:
        yield RunningConsole(url_of(sock), config, server)
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def chromium_missing() -> str | None:
    """Why the browser tests cannot run here (None when they can)."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing: install Debian's chromium (.ci/run does as root)"
    return None


@contextlib.contextmanager
def browser_page() -> Iterator[Any]:
    """A page of headless Chromium (Debian's, never a downloaded one)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM),
                                             args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": 1400, "height": 1000})
        finally:
            browser.close()


@contextlib.contextmanager
def signed_in_page(url: str, api_key: str, name: str = "tester") -> Iterator[Any]:
    """A browser page signed in to the console at ``url`` through its form, on the
    sessions page."""
    with browser_page() as page:
        page.goto(url + "login")
        page.fill("#key", api_key)
        page.fill("#name", name)
        page.click("button[type=submit]")
        page.wait_for_url(url)
        yield page


def wait_for_pictures(page: Any, selector: str, timeout_s: float = 120) -> None:
    """Wait until every picture matching ``selector`` has loaded (and there is one)."""
    page.wait_for_function(
        "s => { const all = [...document.querySelectorAll(s)];"
        " return all.length > 0 && all.every(i => i.complete && i.naturalWidth > 0); }",
        arg=selector, timeout=timeout_s * 1000)


def screenshot(page: Any, name: str) -> Path:
    """Save the whole page as ``artifacts/console/<name>.png``; return the path."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
