"""``spm-bluesky`` refuses what it cannot do at once: one line on stderr, the right exit
status, no traceback, and nothing started (no process, no data directory, no state file)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

from spm_bluesky.commandline import main as cli
from spm_bluesky.commandline import run as run_cli
from spm_bluesky.commandline import services as services_cli
from spm_bluesky.services.launch import HOME_ENV, STATE_FILE, ProcessRecord, ServiceState

REPO = Path(__file__).resolve().parents[2]


def spm(capsys, *args: object) -> tuple[int, str, str]:
    """``spm-bluesky ARGS`` in this process: exit status, stdout, stderr."""
    code = cli.main([str(arg) for arg in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line(err: str) -> None:
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err


@pytest.fixture
def nothing_started(tmp_path: Path):
    """A data directory that must stay absent, and no child process left behind."""
    data_dir = tmp_path / "data"
    before = {child.pid for child in psutil.Process().children(recursive=True)}
    yield data_dir
    assert not data_dir.exists()
    after = {child.pid for child in psutil.Process().children(recursive=True)}
    assert after <= before


def state_with_dead_ioc(data_dir: Path, tiled: ProcessRecord | None = None) -> ServiceState:
    """A state file whose IOC has exited (a real, finished process)."""
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    dead = ProcessRecord.of(done.pid, "127.0.0.1:1", data_dir / "ioc.log")
    done.wait()
    data_dir.mkdir(parents=True, exist_ok=True)
    state = ServiceState(
        data_dir=str(data_dir), prefix="STM:", seed=0, sim=True, ca_port=1, epics_env={},
        tiled_uri="http://127.0.0.1:2", api_key="secret", ioc=dead, tiled=tiled or dead,
        started=time.time())
    state.write()
    return state


@pytest.mark.parametrize(("args", "message"), [
    (["--bad-limit", "-3", "--images", "5"], "--bad-limit: '-3' is not a positive integer"),
    (["--hours", "abc"], "--hours: 'abc' is not a positive number"),
    (["--hours", "0"], "--hours: '0' is not a positive number"),
    (["--images", "2.5"], "--images: '2.5' is not a positive integer"),
    (["--images", "5", "--run-images", "0"], "--run-images: '0' is not a positive integer"),
    (["--images", "5", "--seed", "-1"], "--seed: '-1' is not a non-negative integer"),
    (["--images", "5", "--policy", "oracle"], "--policy: 'oracle' is not one of agent"),
    (["--policy", "heuristic"], "give --hours or --images"),
])
def test_run_checks_its_options_before_anything_starts(capsys, nothing_started, args,
                                                       message):
    start = time.monotonic()
    code, out, err = spm(capsys, "run", *args, "--data-dir", nothing_started)
    assert code == 2 and out == ""
    assert_one_line(err)
    assert err.startswith("spm-bluesky run: error: ") and message in err
    assert time.monotonic() - start < 5


def test_resume_with_nothing_up_answers_at_once(capsys, nothing_started):
    start = time.monotonic()
    code, _, err = spm(capsys, "run", "--resume", "nosuchsession", "--images", "5",
                       "--policy", "heuristic", "--data-dir", nothing_started)
    assert code == 1
    assert_one_line(err)
    assert "cannot resume nosuchsession" in err and "spm-bluesky up" in err
    assert time.monotonic() - start < 5


def test_resume_past_a_limit_is_refused_before_the_ioc_is_connected(capsys, tmp_path,
                                                                    monkeypatch):
    """Limits count the whole session: 10 images for a session with 30 is refused."""
    from spm_bluesky.autonomy import state as autonomy_state
    from spm_bluesky.services import profile

    stored = SimpleNamespace(session_uid="abcdef0123", images=30, elapsed=1800.0)
    monkeypatch.setattr(run_cli, "services_up", lambda data_dir: True)
    monkeypatch.setattr(run_cli, "ensure_services", lambda data_dir, seed: False)
    monkeypatch.setattr(profile, "connect_tiled", lambda settings: object())
    monkeypatch.setattr(run_cli, "resolve_session", lambda catalog, text: "abcdef0123")
    monkeypatch.setattr(autonomy_state, "rebuild", lambda client, uid, **where: stored)

    def no_ioc(*args, **kwargs):
        raise AssertionError("the IOC was connected")

    monkeypatch.setattr(profile, "connect_stm", no_ioc)
    data_dir = tmp_path / "data"
    for limit, message in ((["--images", "10"], "already has 30 images"),
                           (["--images", "30"], "give more than 30"),
                           (["--hours", "0.5"], "already ran 0.500 instrument hours")):
        code, _, err = spm(capsys, "run", "--resume", "abcdef", *limit, "--policy",
                           "heuristic", "--data-dir", data_dir)
        assert code == 2
        assert_one_line(err)
        assert message in err and "counts the whole session" in err
    # Above the totals the session goes on: the IOC is connected next.
    with pytest.raises(AssertionError, match="the IOC was connected"):
        cli.main(["run", "--resume", "abcdef", "--images", "31", "--policy", "heuristic",
                  "--data-dir", str(data_dir)])
    assert "30 images" in capsys.readouterr().out


def test_up_refuses_a_file_as_data_directory(capsys):
    readme = REPO / "README.md"
    code, out, err = spm(capsys, "up", "--data-dir", readme)
    assert code == 2 and out == ""
    assert_one_line(err)
    assert f"--data-dir: '{readme}' is not a directory" in err


def test_the_data_directory_from_the_environment_is_checked_too(capsys, monkeypatch):
    monkeypatch.setenv(HOME_ENV, str(REPO / "README.md"))
    code, _, err = spm(capsys, "status")
    assert code == 2
    assert_one_line(err)
    assert f"${HOME_ENV}" in err


@pytest.mark.parametrize(("args", "message"), [
    (["--ioc-port", "0"], "--ioc-port: '0' is not a port"),
    (["--tiled-port", "70000"], "--tiled-port: '70000' is not a port"),
    (["--time-scale", "-1"], "--time-scale: '-1' is not a non-negative number"),
    (["--timeout", "0"], "--timeout: '0' is not a positive number"),
    (["--prefix", " "], "--prefix: the PV prefix is empty"),
])
def test_up_checks_its_options(capsys, nothing_started, args, message):
    code, _, err = spm(capsys, "up", *args, "--data-dir", nothing_started)
    assert code == 2
    assert_one_line(err)
    assert message in err


def test_up_while_up_names_the_options_it_ignored(capsys, tmp_path, monkeypatch):
    state = state_with_dead_ioc(tmp_path / "data")
    calls = []
    monkeypatch.setattr(services_cli, "up", lambda options: calls.append(options) or
                        (state, False))
    code, out, err = spm(capsys, "up", "--seed", "5", "--prefix", "XX:", "--data-dir",
                         tmp_path / "data")
    assert code == 1 and "already up" in out
    assert_one_line(err)
    assert err.startswith("spm-bluesky up: ignored ") and "spm-bluesky down" in err
    assert "--seed 5" in err and "--prefix XX:" in err
    # The same values as what runs, or none given: nothing to say.
    assert spm(capsys, "up", "--seed", "0", "--data-dir", tmp_path / "data")[0] == 0
    assert len(calls) == 2


def test_down_says_which_service_had_already_exited(capsys, tmp_path):
    alive = ProcessRecord.of(psutil.Process().pid, "me", tmp_path / "log")
    state = state_with_dead_ioc(tmp_path / "data", tiled=alive)
    from spm_bluesky.services import launch

    stopped = []
    original = launch._stop
    launch._stop = lambda proc, timeout=10.0: stopped.append(proc.pid)  # not this process
    try:
        code, out, err = spm(capsys, "down", "--data-dir", tmp_path / "data")
    finally:
        launch._stop = original
    assert code == 0 and err == ""
    assert f"stopped tiled (pid {alive.pid})" in out
    assert f"ioc (pid {state.ioc.pid}) had already exited" in out
    assert "stopped ioc" not in out
    assert stopped == [alive.pid] and not (tmp_path / "data" / STATE_FILE).exists()


def test_status_into_a_closed_pipe_ends_quietly(tmp_path):
    state_with_dead_ioc(tmp_path / "data")
    reader, writer = __import__("os").pipe()
    __import__("os").close(reader)
    result = subprocess.run([sys.executable, "-m", "spm_bluesky", "status", "--data-dir",
                             str(tmp_path / "data")], stdout=writer, stderr=subprocess.PIPE,
                            text=True, timeout=120, cwd=REPO)
    __import__("os").close(writer)
    assert result.returncode == 1
    assert result.stderr == ""


def test_shell_with_nothing_up_opens_with_a_warning(capsys, tmp_path, monkeypatch):
    started = {}

    def execve(path, argv, env):
        started.update(path=path, argv=argv, env=env)

    monkeypatch.setattr(services_cli.os, "execve", execve)
    data_dir = tmp_path / "data"
    code, _, err = spm(capsys, "shell", "--data-dir", data_dir, "--", "--pylab")
    assert code == 0
    assert_one_line(err)
    assert err.startswith("spm-bluesky shell: warning: no services are up")
    assert started["argv"][1:3] == ["-m", "IPython"] and started["argv"][-1] == "--pylab"
    assert started["env"][HOME_ENV] == str(data_dir)
    assert not data_dir.exists()


def test_replay_defaults_to_the_shipped_assessor(capsys, tmp_path, monkeypatch):
    from spm_bluesky.ml.assessor import assessor
    from spm_bluesky.ml.card import GATE

    loaded = []
    monkeypatch.setattr(assessor, "load_assessor", lambda path: loaded.append(path))
    code, _, err = spm(capsys, "replay", "abc", "--data-dir", tmp_path / "data")
    assert loaded == [GATE]
    assert code == 1  # there is no Tiled data to replay from
    assert_one_line(err)
    assert "no Tiled data" in err


def test_no_api_key_on_the_command_line(capsys):
    for command in (["report"], ["replay", "abc"], ["train", "agent"]):
        code, _, err = spm(capsys, *command, "--api-key", "secret")
        assert code == 2
        assert_one_line(err)
        assert "No such option: --api-key" in err and "secret" not in err


def test_state_file_is_json_with_the_time_scale(tmp_path):
    state = state_with_dead_ioc(tmp_path / "data")
    assert json.loads(state.path.read_text())["time_scale"] == 0.0
    assert ServiceState.read(tmp_path / "data") == state


@pytest.mark.parametrize(("value", "message"), [
    ("0", "--good-weight: '0' is not a positive number"),
    ("-4", "--good-weight: '-4' is not a positive number"),
    ("four", "--good-weight: 'four' is not a positive number"),
])
def test_train_assessor_checks_the_good_weight_before_training(capsys, tmp_path, value,
                                                               message):
    out = tmp_path / "weights" / "assessor.pt"
    code, _, err = spm(capsys, "train", "assessor", "--good-weight", value, "--out", out)
    assert code == 2
    assert_one_line(err)
    assert message in err
    assert not out.parent.exists()


@pytest.mark.parametrize("given", [("--good-weight", "4"), ("--scale-free",),
                                   ("--visible-ghosts",), ("--images", "20000"),
                                   ("--synth-images", "0"),
                                   ("--leave-out", "layer"), ("--data", "shards"),
                                   ("--workers", "2")])
def test_a_fine_tune_refuses_the_options_of_training_from_rendered_images(capsys, tmp_path,
                                                                          given):
    """Given on the command line (even at its default value), an option the fine-tune would
    ignore is refused before Tiled is asked; nothing is written."""
    out = tmp_path / "weights" / "mine.pt"
    code, _, err = spm(capsys, "train", "assessor", "--from-tiled", *given, "--out", out,
                       "--data-dir", tmp_path / "data")
    assert code == 2
    assert_one_line(err)
    assert f"{given[0]}: does not apply with --from-tiled" in err
    assert not out.parent.exists() and not (tmp_path / "data").exists()


def test_train_assessor_passes_visible_ghosts_to_the_synthetic_frames(capsys, tmp_path,
                                                                      monkeypatch):
    """``--visible-ghosts`` reaches the training configuration's synthetic frames; without
    it they are rendered as for the shipped weights."""
    import types

    import spm_bluesky.ml.assessor.training as training

    seen = []

    def capture(config, **_):
        seen.append(config.synth.visible_ghosts)
        return types.SimpleNamespace(weights="a.pt", model_id="tipnet-0", card="a.card.json",
                                     temperature=1.0, wall_time_s=0.0)

    monkeypatch.setattr(training, "train", capture)
    for flag in ([], ["--visible-ghosts"]):
        code, _, err = spm(capsys, "train", "assessor", *flag, "--out", tmp_path / "a.pt")
        assert code == 0, err
    assert seen == [False, True]


def _closed_port() -> int:
    """A loopback TCP port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("command", [
    ("report", "--list"),
    ("train", "assessor", "--from-tiled", "--out", "mine.pt"),
    ("train", "agent", "--from-tiled", "URI", "--out", "mine.pt"),
])
def test_a_tiled_address_where_nothing_answers_is_refused_at_once(capsys, tmp_path,
                                                                   monkeypatch, command):
    """Tiled's client would retry a refused connection for 31 to 45 s; the command says so at
    once (within 20 s: the first import of Tiled's client takes seconds on a busy machine)."""
    monkeypatch.chdir(tmp_path)
    uri = f"http://127.0.0.1:{_closed_port()}/api"
    key = tmp_path / "tiled.key"
    key.write_text("secret")
    args = [uri if arg == "URI" else arg for arg in command]
    if "URI" not in command:
        args += ["--tiled-uri", uri]
    started = time.monotonic()
    code, out, err = spm(capsys, *args, "--api-key-file", key)
    assert time.monotonic() - started < 20, "the refusal waited for retries"
    assert code in (1, 2), (code, out, err)
    assert_one_line(err)
    assert f"cannot read from Tiled at {uri}: nothing answers at 127.0.0.1:" in err
    assert not (tmp_path / "mine.pt").exists()
