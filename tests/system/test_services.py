"""``spm-bluesky up / status / down`` for real: detached IOC and Tiled processes on loopback."""

from __future__ import annotations

import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from spm_bluesky.services.epics_env import free_port
from spm_bluesky.services.launch import ServiceError, UpOptions, up
from spm_bluesky.storage import connect
from tests.session_helpers import clean_env, kill_leftovers, processes_in, read_state, spm

pytestmark = pytest.mark.integration


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """A fresh data directory; whatever still runs there afterwards is stopped."""
    path = tmp_path / "spm-data"
    try:
        yield path
    finally:
        spm("down", "--data-dir", path)
        kill_leftovers(tmp_path)


def _ca_read(pv: str, epics_env: dict[str, str]) -> str:
    """Read a PV with caproto in a separate process that has only the recorded CA settings."""
    code = ("from caproto.sync.client import read; "
            f"print(read({pv!r}, timeout=5, repeater=False).data[0])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, env=clean_env(**epics_env))
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def _wait_gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


def test_commands_say_when_nothing_is_up(data_dir: Path) -> None:
    status = spm("status", "--data-dir", data_dir)
    assert status.returncode == 1
    assert f"no services are up in {data_dir}" in status.stdout
    assert "spm-bluesky up" in status.stdout
    down = spm("down", "--data-dir", data_dir)
    assert down.returncode == 0 and "nothing to stop" in down.stdout
    # `shell` opens anyway, with a warning; the profile says what is missing.
    shell = spm("shell", "--data-dir", data_dir, "--", "-c", "print('OPE' + 'NED')")
    assert shell.returncode == 0, shell.stderr
    assert shell.stderr.startswith("spm-bluesky shell: warning: no services are up")
    assert "OPENED" in shell.stdout and "Traceback" not in shell.stdout + shell.stderr


@pytest.mark.slow
def test_up_status_down(data_dir: Path) -> None:
    up = spm("up", "--data-dir", data_dir, "--seed", "3")
    assert up.returncode == 0, up.stderr
    assert "started:" in up.stdout
    state_file = data_dir / "services.json"
    assert stat.S_IMODE(state_file.stat().st_mode) == 0o600
    state = read_state(data_dir)
    assert state["data_dir"] == str(data_dir)
    assert state["api_key"] == (data_dir / "tiled" / "api_key").read_text().strip()
    assert state["epics_env"]["EPICS_CA_SERVER_PORT"] == str(state["ca_port"])
    assert state["epics_env"]["EPICS_CA_ADDR_LIST"] == "127.0.0.1"
    assert state["tiled_uri"].startswith("http://127.0.0.1:")
    ioc_pid, tiled_pid = state["ioc"]["pid"], state["tiled"]["pid"]
    assert psutil.pid_exists(ioc_pid) and psutil.pid_exists(tiled_pid)

    # Both answer clients that know only what the state file says.
    assert _ca_read("STM:Sim:Seed", state["epics_env"]) == "3"
    assert len(connect(state["tiled_uri"], state["api_key"])) == 0

    status = spm("status", "--data-dir", data_dir)
    assert status.returncode == 0, status.stdout
    assert status.stdout.count("running, answering") == 3  # the IOC, Tiled and the console
    assert f"127.0.0.1:{state['ca_port']}" in status.stdout
    assert state["tiled_uri"] in status.stdout

    again = spm("up", "--data-dir", data_dir)
    assert again.returncode == 0 and "already up" in again.stdout
    assert read_state(data_dir)["ioc"]["pid"] == ioc_pid

    # A service that died is reported, and `up` starts it again alone: same port, same key.
    psutil.Process(tiled_pid).kill()
    assert _wait_gone(tiled_pid)
    status = spm("status", "--data-dir", data_dir)
    assert status.returncode == 1
    lines = status.stdout.splitlines()
    assert any(line.split()[:3] == ["ioc", "running,", "answering"] for line in lines)
    assert any(line.split()[:2] == ["tiled", "NOT"] for line in lines), status.stdout
    assert "down: tiled;" in status.stdout
    restarted = spm("up", "--data-dir", data_dir)
    assert restarted.returncode == 0, restarted.stderr
    again_state = read_state(data_dir)
    assert again_state["ioc"]["pid"] == ioc_pid  # the IOC was left alone
    assert again_state["tiled"]["pid"] != tiled_pid
    assert again_state["tiled_uri"] == state["tiled_uri"]
    assert again_state["api_key"] == state["api_key"]
    assert len(connect(state["tiled_uri"], state["api_key"])) == 0
    assert spm("status", "--data-dir", data_dir).returncode == 0
    tiled_pid = again_state["tiled"]["pid"]

    down = spm("down", "--data-dir", data_dir)
    assert down.returncode == 0, down.stderr
    assert _wait_gone(ioc_pid)
    assert not state_file.exists()
    assert processes_in(data_dir) == []
    after = spm("status", "--data-dir", data_dir)
    assert after.returncode == 1 and "no services are up" in after.stdout


@pytest.mark.parametrize("option", ["--ioc-port", "--tiled-port"])
def test_taken_port_is_refused_before_anything_starts(data_dir: Path, option: str) -> None:
    port = free_port()
    with socket.socket() as tcp, socket.socket(type=socket.SOCK_DGRAM) as udp:
        tcp.bind(("127.0.0.1", port))
        tcp.listen()
        udp.bind(("127.0.0.1", port))
        up = spm("up", "--data-dir", data_dir, option, str(port))
    assert up.returncode == 1
    assert f"port {port}" in up.stderr and "is taken" in up.stderr and option in up.stderr
    assert not (data_dir / "services.json").exists()
    assert not (data_dir / "ioc.log").exists()
    assert processes_in(data_dir) == []


def test_ioc_that_does_not_start_is_reported_with_its_log(data_dir: Path) -> None:
    # The command line refuses the bad value itself; the library passes it to the IOC.
    refused = spm("up", "--data-dir", data_dir, "--time-scale", "-1")
    assert refused.returncode == 2 and len(refused.stderr.splitlines()) == 1
    assert not data_dir.exists()
    with pytest.raises(ServiceError) as failed:
        up(UpOptions(data_dir=data_dir, time_scale=-1))
    message = str(failed.value)
    assert "the IOC did not start" in message
    assert "End of its log" in message and "time-scale" in message  # the IOC's own error
    assert not (data_dir / "services.json").exists()
    assert processes_in(data_dir) == []


def test_tiled_that_does_not_start_is_reported_and_the_ioc_stopped(data_dir: Path) -> None:
    (data_dir / "tiled").mkdir(parents=True)
    (data_dir / "tiled" / "api_key").write_text("not a key!\n")
    up = spm("up", "--data-dir", data_dir)
    assert up.returncode == 1
    assert "Tiled did not start" in up.stderr and "api_key" in up.stderr
    assert (data_dir / "ioc.log").exists()  # the IOC had started ...
    assert not (data_dir / "services.json").exists()
    assert processes_in(data_dir) == []  # ... and was stopped again


def test_a_chosen_port_taken_before_the_ioc_binds_it_is_chosen_again(
        data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process (a CA client's UDP socket, say) takes the port ``up`` chose before
    the IOC binds it: ``up`` starts the IOC again on another port."""
    from spm_bluesky.services import launch

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taker:
        taker.bind(("127.0.0.1", 0))
        taken = taker.getsockname()[1]
        ports = iter([taken])
        monkeypatch.setattr(launch, "free_port", lambda: next(ports, None) or free_port())
        state, started = up(UpOptions(data_dir=data_dir))
    assert started and state.ca_port != taken
    assert "Address already in use" in (data_dir / "ioc.log").read_text()  # the first try
    assert _ca_read("STM:Status:Clock", state.epics_env) != ""
