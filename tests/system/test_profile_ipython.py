"""The IPython profile, driven in a terminal as a person would: `spm-bluesky shell`, a survey,
then the run read back from ``c[-1]``; metadata that survives a restart; clear warnings when
no services are up."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pexpect
import pytest

from spm_bluesky.storage import connect, read_image_stream
from tests.session_helpers import PROFILE_DIR, REPO, SPM, clean_env, services_up

pytestmark = pytest.mark.integration

#: Startup imports bluesky, ophyd-async and tiled: slow on a loaded machine.
STARTUP_TIMEOUT = 120
IPYTHON_ARGS = ["--HistoryManager.enabled=False", "--colors=nocolor"]
#: Terminal control sequences (cursor moves, colours, titles) between the printed words.
ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The IOC and Tiled, started with `spm-bluesky up` in a fresh data directory."""
    with services_up(tmp_path_factory.mktemp("session") / "spm-data") as state:
        yield state


class Terminal:
    """An interactive program in a pseudo-terminal, typed into line by line."""

    def __init__(self, command: str, args: list[str], env: dict[str, str]) -> None:
        self.child = pexpect.spawn(command, args, env=env, cwd=str(REPO), encoding="utf-8",
                                   dimensions=(50, 200), timeout=STARTUP_TIMEOUT)
        self.child.logfile_read = sys.stdout  # shown by pytest when a test fails
        self.cells = 0

    def wait_prompt(self, timeout: float = 60) -> str:
        """Wait for the next numbered prompt; return the text printed before it.

        The number matters: the line editor redraws the current prompt while a line is typed.
        """
        self.cells += 1
        self.child.expect_exact(f"In [{self.cells}]:", timeout=timeout)
        return ESCAPES.sub("", self.child.before)

    def type(self, line: str, timeout: float = 60) -> str:
        """Type a line and Enter; return what was printed until the next prompt."""
        self.child.sendline(line)
        return self.wait_prompt(timeout)

    def exit(self) -> int:
        """Type ``exit`` and return the exit status."""
        self.child.sendline("exit")
        self.child.expect(pexpect.EOF, timeout=60)
        self.child.close()
        return self.child.exitstatus


def shell(state: dict[str, Any]) -> Terminal:
    """`spm-bluesky shell` for the services of ``state``, at its first prompt."""
    terminal = Terminal(SPM, ["shell", "--data-dir", state["data_dir"], "--", *IPYTHON_ARGS],
                        clean_env(TERM="xterm"))
    banner = terminal.wait_prompt(STARTUP_TIMEOUT)
    assert "spm-bluesky session ready" in banner
    assert "NOT CONNECTED" not in banner and "NO TILED" not in banner, banner
    return terminal


def test_survey_in_ipython_then_read_it_from_tiled(services: dict[str, Any]) -> None:
    terminal = shell(services)
    out = terminal.type("RE(survey(stm, 3))")
    assert "Transient Scan ID: 1" in out  # BestEffortCallback's table
    uid = re.search(r"Out\[\d+\]: \('([0-9a-f-]{36})',\)", out).group(1)

    terminal.type("run = c[-1]")
    # The marker is split so that the echo of the typed line cannot match.
    out = terminal.type("print('RES' + 'ULT', run.start['uid'], run.start['plan_name'], "
                        "run['primary']['stm-scan-image'].shape, live_image.shown)")
    found = re.search(r"RESULT (\S+) (\S+) \((\d+), (\d+), (\d+)\) (\d+)", out)
    assert found, out
    assert found.group(1) == uid and found.group(2) == "survey"
    assert found.groups()[2:] == ("3", "64", "64", "3")  # 3 images, each shown live

    terminal.type("RE.md['operator'] = 'terminal test'")
    assert terminal.exit() == 0

    # Another client sees the same run, with the images in metres.
    run = connect(services["tiled_uri"], services["api_key"])[uid]
    stack = read_image_stream(run, "stm-scan-image")
    assert stack.images.shape == (3, 64, 64) and stack.units == "m"
    assert run.metadata["start"]["scan_id"] == 1

    # RE.md (scan_id included) survives a restart of the session.
    terminal = shell(services)
    out = terminal.type("print('M' + 'D:', RE.md['operator'], RE.md['scan_id'])")
    assert "MD: terminal test 1" in out
    # The mask passes between plans in memory; autonomous_session is a global that takes
    # its assessor and policy by name.
    terminal.type("area = AreaMask(); RE(survey(stm, 2, mask=area))")
    out = terminal.type("print('MA' + 'SK', area.free_cells, autonomous_session.__module__)")
    assert "MASK 7223 spm_bluesky.services.queue_plans" in out, out
    assert terminal.exit() == 0


def test_profile_without_services_says_what_is_missing(tmp_path: Path) -> None:
    """`ipython --profile-dir=profile_collection` with nothing up: warnings, not tracebacks."""
    terminal = Terminal(sys.executable,
                        ["-m", "IPython", f"--profile-dir={PROFILE_DIR}", *IPYTHON_ARGS],
                        clean_env(TERM="xterm", SPM_BLUESKY_HOME=str(tmp_path)))
    banner = terminal.wait_prompt(STARTUP_TIMEOUT)
    assert "WARNING: runs are NOT saved: no Tiled server is configured" in banner
    assert "WARNING: no microscope: the STM (prefix STM:) does not answer" in banner
    assert "spm-bluesky up" in banner and "Traceback" not in banner
    assert "NOT CONNECTED" in banner
    assert terminal.exit() == 0
