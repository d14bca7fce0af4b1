"""``spm-bluesky console`` as a person starts it: on 127.0.0.1, the key from the
environment (never on its command line or in what it prints), nothing served without it."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator

import httpx
import psutil
import pytest

from spm_bluesky.storage import TiledServer
from tests.session_helpers import SPM, clean_env

pytestmark = pytest.mark.integration

READY = re.compile(r"spm-console ready url=(\S+)")


@pytest.fixture
def console(tiled_server: TiledServer) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """The console over the test Tiled server, started as a person would; its URL."""
    process = subprocess.Popen(
        [SPM, "console", "--tiled-uri", tiled_server.uri], stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
        env=clean_env(SPM_TILED_API_KEY=tiled_server.api_key))
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        found = READY.search(line)
        assert found, line + process.stdout.read()
        yield found.group(1), process
    finally:
        process.terminate()
        process.wait(20)


def test_the_console_binds_loopback_and_never_shows_the_key(
        console: tuple[str, subprocess.Popen[str]], tiled_server: TiledServer) -> None:
    url, process = console
    assert url.startswith("http://127.0.0.1:")
    assert tiled_server.api_key not in " ".join(psutil.Process(process.pid).cmdline())
    listening = {c.laddr.ip for c in psutil.Process(process.pid).net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN}
    assert listening == {"127.0.0.1"}
    refused = httpx.get(url + "api/sessions")
    assert refused.status_code == 401 and "needs the API key" in refused.json()["detail"]
    allowed = httpx.get(url + "api/sessions",
                        headers={"Authorization": f"Apikey {tiled_server.api_key}"})
    assert allowed.status_code == 200 and isinstance(allowed.json(), list)
    process.terminate()
    output = process.communicate(timeout=20)[0]
    assert tiled_server.api_key not in output


def test_another_address_is_warned_about_loudly() -> None:
    # 192.0.2.1 (TEST-NET) is no address of this machine: the warning, then a clear failure.
    started = time.monotonic()
    result = subprocess.run([SPM, "console", "--tiled-uri", "http://127.0.0.1:9", "--host",
                             "192.0.2.1"], capture_output=True, text=True, timeout=60,
                            env=clean_env(SPM_TILED_API_KEY="k"))
    assert result.returncode == 1
    assert "warning: listening on 192.0.2.1, not 127.0.0.1: other machines can reach" in \
        result.stderr
    assert "cannot listen on 192.0.2.1:0" in result.stderr
    assert time.monotonic() - started < 60


def test_without_a_key_the_console_does_not_start(tmp_path) -> None:
    result = subprocess.run([SPM, "console", "--tiled-uri", "http://127.0.0.1:9",
                             "--data-dir", tmp_path], capture_output=True, text=True,
                            timeout=60, env=clean_env())
    assert result.returncode == 1
    assert "needs an API key: --api-key-file or $SPM_TILED_API_KEY" in result.stderr
    no_tiled = subprocess.run([SPM, "console", "--data-dir", tmp_path], capture_output=True,
                              text=True, timeout=60, env=clean_env())
    assert no_tiled.returncode == 1 and "spm-bluesky up --data-dir" in no_tiled.stderr
