"""``spm-bluesky demo`` as a user runs it: a subprocess that starts the IOC and Tiled, runs a
short session, writes the report and leaves nothing running (also after Ctrl-C)."""

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
