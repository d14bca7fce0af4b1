"""Session control from the console, for real: ``spm-bluesky up``, a twin session running in
``spm-bluesky run``, the console over the same data directory, a person's clicks in headless
Chromium. While paused the session takes no image (counted in Tiled); after resume it goes
on; a stop ends the run command as Ctrl-C does; each applied command is a document in
Tiled; bad requests are refused and change nothing."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from spm_bluesky import schema
from spm_bluesky.autonomy.control import (
    control_dir,
)
from spm_bluesky.storage import connect, read_stream_table, runs_by_session, runs_of_plan
from tests.console_helpers import (
    chromium_missing,
    console_running,
    screenshot,
    signed_in_page,
)
from tests.session_helpers import clean_env, kill_leftovers, read_state, spm

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(chromium_missing() is not None,
                                 reason=chromium_missing() or "")]



#: Seconds the session stays paused (no image may be taken meanwhile).
PAUSED_WATCH_S = 5.0


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return value


def frame_times(client: Any, uid: str) -> list[float]:
    """When each image of the session that Tiled holds now was taken (its event's time)."""
    times: list[float] = []
    for run in runs_by_session(client, uid).values():
        if run.metadata["start"].get(schema.PLAN_NAME) in schema.IMAGE_PLANS:
            table = read_stream_table(run, schema.PRIMARY)
            times.extend([] if table is None else table["time"].tolist())
    return times


def control_documents(client: Any, uid: str) -> list[tuple[str, str]]:
    """(command, who) of every ``session_control`` run of the session in Tiled, in order."""
    found = []
    for run in runs_of_plan(client, schema.SESSION_CONTROL, uid).values():
        start = run.metadata["start"]
        table = read_stream_table(run, schema.CONTROL)
        assert table is not None and len(table) == 1 and "stop" in run.metadata
        row = table.iloc[0]
        assert row[schema.CONTROL_WHO] == start[schema.WHO]
        found.append((str(row[schema.CONTROL_COMMAND]), str(row[schema.CONTROL_WHO])))
    return found


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Services from ``up`` and a long twin session running in ``spm-bluesky run``."""
    data_dir = tmp_path_factory.mktemp("control") / "spm-data"
    up = spm("up", "--no-console", "--data-dir", data_dir)  # the test serves its own
    assert up.returncode == 0, up.stderr
    log = data_dir.parent / "run.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "spm_bluesky", "run", "--images", "100000", "--policy",
             "heuristic", "--run-images", "10", "--data-dir", str(data_dir)],
            stdout=out, stderr=subprocess.STDOUT, env=clean_env())
    try:
        line = wait_for(lambda: next((ln for ln in log.read_text().splitlines()
                                      if ln.startswith("session ")), None)
                        or (process.poll() is not None and log.read_text()), 180,
                        "the session line")
        assert process.poll() is None, line
        state = read_state(data_dir)
        yield {**state, "uid": line.split()[1], "data_dir": data_dir, "process": process,
               "log": log, "client": connect(state["tiled_uri"], state["api_key"])}
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(120)
        spm("down", "--data-dir", data_dir)
        kill_leftovers(data_dir.parent)


@pytest.fixture(scope="module")
def console(running: dict[str, Any]) -> Iterator[Any]:
    with console_running(running["tiled_uri"], running["api_key"],
                         running["data_dir"]) as served:
        yield served


def request_files(data_dir: Path) -> dict[str, str]:
    directory = control_dir(data_dir)
    return {p.name: p.read_text() for p in sorted(directory.glob("*.json"))
            if not p.name.endswith(".state.json")}


def test_pause_resume_and_stop_from_the_page(running, console):
    client, uid, process = running["client"], running["uid"], running["process"]
    wait_for(lambda: len(frame_times(client, uid)) >= 5, 180, "the first images in Tiled")
    api = f"{console.url}api/sessions/{uid}/control"

    def post(body: Any, session_uid: str = uid) -> httpx.Response:
        return console.http().post(f"api/sessions/{session_uid}/control", json=body)

    with signed_in_page(console.url, console.config.api_key) as page:
        page.goto(f"{console.url}sessions/{uid}/control")
        page.wait_for_function("document.getElementById('control-state').textContent === "
                               "'running'")
        assert page.is_enabled("#control-pause") and page.is_disabled("#control-resume")
        screenshot(page, "control-running")

        page.click("#control-pause")
        page.wait_for_function("document.getElementById('control-state').textContent === "
                               "'paused'", timeout=60000)
        assert page.is_enabled("#control-resume") and page.is_disabled("#control-pause")
        screenshot(page, "control-paused")
        paused = console.http().get(api).json()
        assert paused["state"] == "paused"
        time.sleep(PAUSED_WATCH_S)
        assert process.poll() is None
        # Refused while paused, and for what is not there: nothing written.
        before = request_files(running["data_dir"])
        refusals = [
            (post({"command": "pause", "who": "eve"}), 409, "is paused: cannot pause"),
            (post({"command": "jump", "who": "eve"}), 400, "unknown command 'jump'"),
            (post({"command": "stop", "who": "eve"}, "f" * 32), 404, "no session"),
            (post({"command": "stop", "who": "eve"}, "../../etc"), 404, ""),
            (post({"who": "eve"}), 400, "unknown command None"),
            (post({"command": "stop", "who": "<b>"}), 400, "who is 1 to 40"),
        ]
        for response, status, message in refusals:
            assert response.status_code == status, response.text
            assert message in response.text
        assert console.http(key=False).post(api, json={"command": "stop"}).status_code == 401
        assert request_files(running["data_dir"]) == before
        assert console.http().get(api).json()["state"] == "paused"

        resumed = time.time()
        page.click("#control-resume")
        page.wait_for_function("document.getElementById('control-state').textContent === "
                               "'running'", timeout=60000)
        # No image was taken while paused; images come again after the resume. Event times
        # say when each was taken, whatever the drain into Tiled lagged.
        wait_for(lambda: any(t > resumed for t in frame_times(client, uid)), 120,
                 "images after resume")
        taken = frame_times(client, uid)
        assert not [t for t in taken if paused["since"] < t < resumed], \
            "the session took images while paused"
        assert len([t for t in taken if t < paused["since"]]) >= 5
        screenshot(page, "control-resumed")
        assert post({"command": "resume", "who": "eve"}).status_code == 409

        page.on("dialog", lambda dialog: dialog.accept())
        page.click("#control-stop")
        assert process.wait(180) == 130, running["log"].read_text()
        page.wait_for_function("document.getElementById('control-state').textContent === "
                               "'stopped'", timeout=30000)
        assert page.is_disabled("#control-stop")
        screenshot(page, "control-stopped")

    assert "stopped from the console" in running["log"].read_text()
    refused = post({"command": "resume", "who": "eve"})
    assert refused.status_code == 409 and "is stopped" in refused.json()["detail"]
    # Every applied command is a document in Tiled, with the name the person signed in with.
    assert wait_for(lambda: control_documents(client, uid) == [
        ("pause", "tester"), ("resume", "tester"), ("stop", "tester")], 60,
        "the control documents in Tiled")
