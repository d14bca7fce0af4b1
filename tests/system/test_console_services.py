"""The console as a service of ``spm-bluesky up``: started on loopback with the key in its
environment only, reported by ``status``, started again alone by ``up``, stopped by ``down``."""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import urlparse

import httpx
import psutil
import pytest

from tests.session_helpers import processes_in, read_state, services_up, spm

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _gone(pid: int, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_up_starts_the_console_status_reports_it_down_stops_it(tmp_path: Path) -> None:
    data_dir = tmp_path / "spm-data"
    with services_up(data_dir) as state:
        console, key = state["console"], state["api_key"]
        url = console["address"]
        assert url.startswith("http://127.0.0.1:")
        process = psutil.Process(console["pid"])
        assert key not in " ".join(process.cmdline())
        assert httpx.get(url + "login").status_code == 200
        assert httpx.get(url + "api/sessions").status_code == 401
        assert httpx.get(url + "api/sessions",
                         headers={"Authorization": f"Apikey {key}"}).json() == []
        assert key not in (data_dir / "console.log").read_text()

        status = spm("status", "--data-dir", data_dir)
        assert status.returncode == 0, status.stdout
        assert any(line.split()[:3] == ["console", "running,", "answering"]
                   for line in status.stdout.splitlines()), status.stdout

        process.kill()
        assert _gone(process.pid)
        status = spm("status", "--data-dir", data_dir)
        assert status.returncode == 1 and "down: console;" in status.stdout
        again = spm("up", "--data-dir", data_dir)
        assert again.returncode == 0, again.stderr
        restarted = read_state(data_dir)
        assert restarted["console"]["pid"] != console["pid"]
        assert urlparse(restarted["console"]["address"]).port == urlparse(url).port
        assert restarted["ioc"]["pid"] == state["ioc"]["pid"]
        assert httpx.get(url + "login").status_code == 200
        pid = restarted["console"]["pid"]
    assert _gone(pid)
    assert processes_in(data_dir) == []


def test_up_without_the_console(tmp_path: Path) -> None:
    with services_up(tmp_path / "spm-data", "--no-console") as state:
        assert state["console"] is None
        status = spm("status", "--data-dir", tmp_path / "spm-data")
        assert status.returncode == 0
        assert not [line for line in status.stdout.splitlines()
                    if line.split()[:1] == ["console"]], status.stdout
