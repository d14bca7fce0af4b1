"""``spm-bluesky demo`` as a user runs it: a subprocess that starts the IOC and Tiled, runs a
short session, writes the report and leaves nothing running (also after Ctrl-C); the same
over the Nanonis simulator (``--backend nanonis-sim``)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from spm_bluesky.services.launch import IOC_LOG, TILED_DIR
from spm_bluesky.services.nanonis_sim import SIM_LOG
from spm_bluesky.storage import TiledConfig, read_image_stream, runs_by_session, start_server

pytestmark = pytest.mark.integration


def demo(data_dir: Path, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EPICS_", "SPM_"))}
    return subprocess.Popen(
        [sys.executable, "-m", "spm_bluesky", "demo", "--data-dir", str(data_dir), *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def processes_using(data_dir: Path) -> list[psutil.Process]:
    """Processes (the IOC, Tiled) started for ``data_dir``: by command line or cwd."""
    found = []
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if str(data_dir) in cmdline or str(proc.info["cwd"] or "").startswith(str(data_dir)):
            found.append(proc)
    return found


def reported(output: str) -> tuple[Path, Path]:
    html = Path(re.search(r"report: (\S+\.html)", output).group(1))
    png = Path(re.search(r"^\s+(\S+\.png)$", output, re.M).group(1))
    return html, png


def test_demo_runs_reports_and_cleans_up(tmp_path):
    data_dir = tmp_path / "data"
    proc = demo(data_dir, "--hours", "0.1", "--policy", "heuristic")
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    assert re.search(r"sim +0\.1\d/0\.1 h \| images +\d+", output)  # the progress line
    assert "done after" in output
    summary = re.search(r"^done after .*$", output, re.M).group(0)
    assert re.search(r", \d+ conditioning episodes?, \d+ tip actions?, \d+ crash(es)?$", summary)
    assert not re.search(r"\b1 (conditioning episodes|tip actions|crashes)\b", summary), summary
    html, png = reported(output)
    assert html.parent == data_dir / "reports" and html.is_file() and png.is_file()
    assert '<section id="map">' in html.read_text()
    assert not (data_dir / "services.json").exists()
    assert processes_using(data_dir) == []


def test_ctrl_c_stops_the_session_reports_and_cleans_up(tmp_path):
    data_dir = tmp_path / "data"
    proc = demo(data_dir, "--hours", "50", "--policy", "heuristic")
    lines = []
    for line in proc.stdout:  # wait until the session runs
        lines.append(line)
        if line.startswith("session "):
            break
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=120)
    output = "".join(lines) + rest
    assert proc.returncode == 130, output
    assert "interrupted after" in output
    html, png = reported(output)
    assert html.is_file() and png.is_file()
    assert processes_using(data_dir) == []


def test_missing_agent_fails_before_starting_anything(tmp_path):
    data_dir = tmp_path / "data"
    proc = demo(data_dir, "--agent", str(tmp_path / "none.pt"))
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert "no weight file" in output and "--policy heuristic" in output
    assert not data_dir.exists()


def test_demo_over_the_nanonis_simulator(tmp_path):
    """The demo's session runs unchanged through the Nanonis simulator and the Nanonis IOC:
    every image the session counted is in Tiled, the report is written, nothing is left."""
    data_dir = tmp_path / "data"
    proc = demo(data_dir, "--backend", "nanonis-sim", "--hours", "0.05", "--policy",
                "heuristic", "--seed", "3")
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    assert "behind the Nanonis simulator on 127.0.0.1:" in output
    assert re.search(r"twin seed 3, backend nanonis-sim", output)
    found = re.search(r"done after \d+ s: [\d.]+ simulated h, (\d+) images", output)
    assert found, output
    images = int(found.group(1))
    assert images > 0
    html, png = reported(output)
    assert html.is_file() and png.is_file() and '<section id="map">' in html.read_text()
    # The IOC spoke the Nanonis protocol to the simulator, which the demo started.
    assert "backend=nanonis 127.0.0.1:" in (data_dir / IOC_LOG).read_text()
    assert (data_dir / SIM_LOG).is_file()
    assert not (data_dir / "services.json").exists()
    assert processes_using(data_dir) == []

    session_uid = re.search(r"^session ([0-9a-f]{32}):", output, re.M).group(1)
    with start_server(TiledConfig(data_dir / TILED_DIR, port=0)) as tiled:
        runs = runs_by_session(tiled.client(), session_uid)
        stored = sum(len(read_image_stream(run).images) for run in runs.values())
    assert stored == images


def test_unknown_backend_is_refused_before_anything_starts(tmp_path):
    data_dir = tmp_path / "data"
    proc = demo(data_dir, "--backend", "nanonis")  # a real controller is no demo
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert len(output.strip().splitlines()) == 1, output
    assert "'nanonis' is not one of twin, nanonis-sim" in output
    assert not data_dir.exists()
