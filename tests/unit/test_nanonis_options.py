"""The Nanonis options of ``spm-bluesky up``, ``spm-bluesky demo`` and ``spm-ioc`` are
checked before anything starts: one line on stderr, exit status 2, no data directory, no
process."""

from __future__ import annotations

import psutil
import pytest

from spm_bluesky.ioc import stm_ioc
from spm_bluesky.ioc.nanonis_backend import parse_address
from tests.unit import test_cli_errors
from tests.unit.test_cli_errors import assert_one_line, spm

nothing_started = test_cli_errors.nothing_started  # the fixture, shared


@pytest.mark.parametrize(("args", "message"), [
    (["--backend", "nanonis"], "--nanonis: HOST:PORT goes with --backend nanonis"),
    (["--nanonis", "10.0.0.2:6501"], "--nanonis: HOST:PORT goes with --backend nanonis"),
    (["--backend", "nanonis", "--nanonis", "10.0.0.2"], "--nanonis: '10.0.0.2' is not HOST:PORT"),
    (["--backend", "nanonis", "--nanonis", "h:99999"], "is not HOST:PORT"),
    (["--backend", "mock"], "--backend: 'mock' is not one of twin, nanonis-sim, nanonis"),
    (["demo", "--backend", "nanonis"], "--backend: 'nanonis' is not one of twin, nanonis-sim"),
])
def test_up_checks_the_backend_options(capsys, nothing_started, args, message):
    command = [] if args[0] == "demo" else ["up"]
    code, _, err = spm(capsys, *command, *args, "--data-dir", nothing_started)
    assert code == 2
    assert_one_line(err)
    assert message in err


@pytest.mark.parametrize("argv", [
    ["--backend", "nanonis"],
    ["--nanonis", "127.0.0.1:6501"],
    ["--truth", "127.0.0.1:6502"],
    ["--backend", "nanonis", "--nanonis", "no-port"],
])
def test_spm_ioc_refuses_inconsistent_backend_options(capsys, argv):
    with pytest.raises(SystemExit) as exit_:
        stm_ioc.main(argv)
    assert exit_.value.code == 2
    assert "spm-ioc: error:" in capsys.readouterr().err


def test_addresses_are_host_and_port():
    assert parse_address("192.168.1.20:6501") == ("192.168.1.20", 6501)
    assert parse_address("localhost:1") == ("localhost", 1)
    for bad in ("6501", ":6501", "host:", "host:0", "host:65536", "host:x"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_address(bad)


def test_the_pv_table_of_a_bare_controller_has_no_sim_pvs():
    from spm_bluesky.ioc.nanonis_backend import NanonisBackend, NanonisConfig
    from spm_bluesky.ioc.pvtable import pv_rows

    bare = {row.name for row in pv_rows(stm_ioc.StmIOC("", NanonisBackend(
        NanonisConfig("127.0.0.1", 6501))))}
    twin = {row.name for row in pv_rows(stm_ioc.SimStmIOC("", stm_ioc.TwinBackend(0)))}
    assert {name for name in twin - bare} == {name for name in twin if name.startswith("Sim:")}
    assert bare < twin


def test_demo_offers_the_backends_it_runs() -> None:
    from spm_bluesky.commandline.demo import DEMO_BACKENDS
    from spm_bluesky.evaluation.demo import BACKENDS

    assert DEMO_BACKENDS == BACKENDS == ("twin", "nanonis-sim")


def test_demo_refuses_services_of_another_backend(capsys, tmp_path):
    """Services recorded in the data directory with another backend: one line, exit 1,
    nothing started (the demo must not run on what the user did not ask for)."""
    data_dir = tmp_path / "data"
    test_cli_errors.state_with_dead_ioc(data_dir)  # recorded with the twin backend
    before = {child.pid for child in psutil.Process().children(recursive=True)}
    code, _, err = spm(capsys, "demo", "--backend", "nanonis-sim", "--policy", "heuristic",
                       "--data-dir", data_dir)
    assert code == 1
    assert_one_line(err)
    assert "have backend twin, not nanonis-sim" in err and "spm-bluesky down" in err
    assert {child.pid for child in psutil.Process().children(recursive=True)} <= before
