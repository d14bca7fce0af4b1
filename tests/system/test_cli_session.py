"""``spm-bluesky`` against real services: a session named by a short uid, a resume that
is refused before the IOC is touched, ``up`` that says what it ignored, ``down`` after the
IOC died, and ``report`` from the stored data once the services are gone."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from spm_bluesky.storage import connect
from tests.session_helpers import kill_leftovers, read_state, spm

pytestmark = pytest.mark.integration

IMAGES = 30


def one_line(stderr: str) -> str:
    assert len(stderr.splitlines()) == 1, stderr
    assert "Traceback" not in stderr
    return stderr


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Services from `up` and a finished session of IMAGES images in them."""
    data_dir = tmp_path_factory.mktemp("cli") / "spm-data"
    up = spm("up", "--data-dir", data_dir)
    assert up.returncode == 0, up.stderr
    try:
        ran = spm("run", "--images", IMAGES, "--policy", "heuristic", "--run-images", 10,
                  "--data-dir", data_dir, timeout=300)
        assert ran.returncode == 0, ran.stdout + ran.stderr
        uid = re.search(r"^session ([0-9a-f]{32})", ran.stdout, re.M).group(1)
        yield {**read_state(data_dir), "uid": uid, "data_dir": data_dir}
    finally:
        spm("down", "--data-dir", data_dir)
        kill_leftovers(data_dir.parent)


def runs_in(state: dict[str, Any]) -> int:
    return len(connect(state["tiled_uri"], state["api_key"]))


def test_resume_past_the_session_total_is_refused_before_the_ioc(session):
    before = runs_in(session)
    start = time.monotonic()
    refused = spm("run", "--resume", session["uid"][:7], "--images", 10, "--policy",
                  "heuristic", "--data-dir", session["data_dir"])
    assert refused.returncode == 2
    assert f"already has {IMAGES} images" in one_line(refused.stderr)
    assert time.monotonic() - start < 60 and runs_in(session) == before


def test_resume_of_an_unknown_session_is_refused_quickly(session):
    before = runs_in(session)
    start = time.monotonic()
    refused = spm("run", "--resume", "nosuchsession", "--images", 10, "--policy",
                  "heuristic", "--data-dir", session["data_dir"])
    assert refused.returncode == 1
    assert "no session 'nosuchsession'" in one_line(refused.stderr)
    assert time.monotonic() - start < 30 and runs_in(session) == before


def test_up_while_up_names_what_it_ignored(session):
    again = spm("up", "--seed", 5, "--prefix", "XX:", "--data-dir", session["data_dir"])
    assert again.returncode == 1 and "already up" in again.stdout
    err = one_line(again.stderr)
    assert "--seed 5" in err and "--prefix XX:" in err
    assert read_state(session["data_dir"])["ioc"]["pid"] == session["ioc"]["pid"]


def test_after_the_ioc_died_down_says_so_and_report_reads_the_stored_data(session):
    """Runs last: it stops the services."""
    data_dir: Path = session["data_dir"]
    ioc = psutil.Process(session["ioc"]["pid"])
    ioc.kill()
    ioc.wait(10)
    down = spm("down", "--data-dir", data_dir)
    assert down.returncode == 0, down.stderr
    assert f"ioc (pid {ioc.pid}) had already exited" in down.stdout
    assert "stopped tiled" in down.stdout and "stopped ioc" not in down.stdout

    # No server runs now: an embedded one reads the data for the command's duration.
    missing = spm("report", "deadbeef", "--data-dir", data_dir)
    assert missing.returncode == 1
    err = one_line(missing.stderr)
    assert "no session 'deadbeef'" in err and "http" not in err and "--list" in err
    short = spm("report", session["uid"][:6], "--data-dir", data_dir, "--out",
                data_dir / "short")
    assert short.returncode == 0, short.stderr
    assert list((data_dir / "short").glob(f"*{session['uid'][:8]}*.html"))
