"""Driving the ``spm-bluesky`` command line from tests, as a person would from a shell."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil

#: The console script installed beside this Python.
SPM = str(Path(sys.executable).with_name("spm-bluesky"))
REPO = Path(__file__).resolve().parents[1]
PROFILE_DIR = REPO / "profile_collection"


def wait_until(condition: Callable[[], object], timeout: float, what: str = "a condition",
               poll: float = 0.02) -> None:
    """Poll ``condition`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(poll)


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without session settings, headless plotting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SPM_", "TILED_API_KEY"))}
    env["MPLBACKEND"] = "Agg"
    env.update(extra)
    return env


def spm(*args: str | Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run ``spm-bluesky ARGS`` and capture its output."""
    return subprocess.run([SPM, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=clean_env(), cwd=REPO)


def read_state(data_dir: Path) -> dict[str, Any]:
    """The state file written by ``spm-bluesky up``."""
    return json.loads((data_dir / "services.json").read_text())


def processes_in(directory: Path) -> list[psutil.Process]:
    """Running processes whose working directory is inside ``directory`` (the services')."""
    found = []
    for proc in psutil.process_iter(["cwd", "status"]):
        cwd = proc.info["cwd"]
        if cwd and proc.info["status"] != psutil.STATUS_ZOMBIE and (
                Path(cwd).is_relative_to(directory)):
            found.append(proc)
    return found


def kill_leftovers(directory: Path) -> None:
    """Kill what a failed test left running in ``directory`` (only our services run there)."""
    for proc in processes_in(directory):
        with contextlib.suppress(psutil.Error):
            proc.kill()


@contextlib.contextmanager
def services_up(data_dir: Path, *args: str) -> Iterator[dict[str, Any]]:
    """``spm-bluesky up`` in ``data_dir`` for the block (then ``down``); yields the state."""
    result = spm("up", "--data-dir", data_dir, *args)
    assert result.returncode == 0, f"spm-bluesky up failed:\n{result.stdout}\n{result.stderr}"
    try:
        yield read_state(data_dir)
    finally:
        spm("down", "--data-dir", data_dir)
        kill_leftovers(data_dir)
