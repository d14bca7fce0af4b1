"""The session control channel with a real RunEngine: a plan of counted steps (each a
checkpoint), requests written as the console writes them, the documents of each applied
command."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import bluesky.plan_stubs as bps
import pytest
from bluesky import RunEngine

from spm_bluesky import schema
from spm_bluesky.autonomy.control import (
    Command,
    ControlError,
    ControlRequest,
    NotApplicable,
    SessionControl,
    SessionStatus,
    StopCause,
    UnknownSession,
    control_dir,
    read_status,
    request,
    run_plan,
)
from tests.session_helpers import wait_until

STEP_S = 0.05


class Steps:
    """A plan of ``n`` steps, each ending at a checkpoint; counts the steps done."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.done = 0

    def plan(self) -> Iterator[Any]:
        for _ in range(self.n):
            yield from bps.checkpoint()
            yield from bps.sleep(STEP_S)
            self.done += 1
        return self.done


def ask(data_dir: Path, uid: str, command: Command, who: str = "ada") -> int:
    return request(data_dir, ControlRequest(uid, command, who, time.time()))


def status(data_dir: Path, uid: str) -> SessionStatus | None:
    state = read_status(data_dir, uid)
    return None if state is None else state.status


@pytest.fixture
def session(tmp_path: Path) -> dict[str, Any]:
    RE = RunEngine(call_returns_result=True)
    docs: list[tuple[str, dict[str, Any]]] = []
    uid = uuid.uuid4().hex
    control = SessionControl(tmp_path, uid, RE, lambda name, doc: docs.append((name, doc)),
                             poll_s=0.05)
    return {"RE": RE, "docs": docs, "uid": uid, "control": control, "dir": tmp_path}


def run_with_console(session: dict[str, Any], steps: Steps,
                     console: Callable[[], None]) -> Any:
    """run_plan in this (the main) thread, as ``spm-bluesky run`` does, while ``console``
    plays the person at the console in another thread; run_plan's result."""
    errors: list[BaseException] = []

    def play() -> None:
        try:
            wait_until(lambda: status(session["dir"], session["uid"]) == SessionStatus.RUNNING, 10)
            console()
        except BaseException as err:  # re-raised in the test's thread
            errors.append(err)
            session["control"].terminate()

    person = threading.Thread(target=play)
    person.start()
    with session["control"] as control:
        result = run_plan(session["RE"], steps.plan(), control)
    person.join(30)
    if errors:
        raise errors[0]
    return result


def applied(docs: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, str]]:
    """(command, who) of every applied command, from its documents alone."""
    starts = {d["uid"]: d for n, d in docs if n == "start"}
    descriptors = {d["uid"]: d for n, d in docs if n == "descriptor"}
    found = []
    for name, doc in docs:
        if name == "event":
            descriptor = descriptors[doc["descriptor"]]
            start = starts[descriptor["run_start"]]
            assert start[schema.PLAN_NAME] == schema.SESSION_CONTROL
            assert descriptor["name"] == schema.CONTROL
            assert start[schema.WHO] == doc["data"][schema.CONTROL_WHO]
            found.append((doc["data"][schema.CONTROL_COMMAND], doc["data"][schema.CONTROL_WHO]))
    assert [n for n, _ in docs].count("stop") == len(found)
    return found


def test_pause_holds_the_plan_until_resume(session):
    steps = Steps(40)
    uid, data_dir = session["uid"], session["dir"]
    held: list[int] = []

    def console() -> None:
        wait_until(lambda: steps.done >= 3, 10)
        ask(data_dir, uid, Command.PAUSE, "ada")
        wait_until(lambda: status(data_dir, uid) == SessionStatus.PAUSED, 10)
        held.append(steps.done)
        time.sleep(10 * STEP_S)
        held.append(steps.done)
        with pytest.raises(NotApplicable, match="is paused: cannot pause"):
            ask(data_dir, uid, Command.PAUSE)
        ask(data_dir, uid, Command.RESUME, "bob")

    result = run_with_console(session, steps, console)
    assert held[0] == held[1] < steps.n
    assert result.plan_result == steps.n == steps.done
    assert applied(session["docs"]) == [("pause", "ada"), ("resume", "bob")]
    assert status(data_dir, uid) == SessionStatus.STOPPED


def test_stop_while_running_and_while_paused(session):
    steps = Steps(200)
    uid, data_dir = session["uid"], session["dir"]

    def stop_running() -> None:
        wait_until(lambda: steps.done >= 2, 10)
        ask(data_dir, uid, Command.STOP, "ada")

    assert run_with_console(session, steps, stop_running) == StopCause.REQUESTED
    assert steps.done < steps.n
    assert applied(session["docs"]) == [("stop", "ada")]
    with pytest.raises(NotApplicable, match="is stopped: cannot resume"):
        ask(data_dir, uid, Command.RESUME)

    # The session resumed by a new process: the earlier stop request is not applied again.
    RE = RunEngine(call_returns_result=True)
    docs: list[tuple[str, dict[str, Any]]] = []
    again = {**session, "RE": RE, "docs": docs, "control": SessionControl(
        data_dir, uid, RE, lambda n, d: docs.append((n, d)), poll_s=0.05)}
    steps = Steps(200)

    def stop_paused() -> None:
        wait_until(lambda: steps.done >= 2, 10)
        ask(data_dir, uid, Command.PAUSE, "bob")
        wait_until(lambda: status(data_dir, uid) == SessionStatus.PAUSED, 10)
        ask(data_dir, uid, Command.STOP, "bob")

    assert run_with_console(again, steps, stop_paused) == StopCause.REQUESTED
    assert 2 <= steps.done < steps.n
    assert applied(docs) == [("pause", "bob"), ("stop", "bob")]


def test_a_pause_the_plan_takes_itself_stops_as_before(session):
    def pauses_itself() -> Iterator[Any]:
        yield from bps.checkpoint()
        yield from bps.pause()
        yield from bps.checkpoint()

    with session["control"] as control:
        assert run_plan(session["RE"], pauses_itself(), control) == StopCause.INTERRUPTED
    assert session["docs"] == []


def test_sigterm_while_paused_stops(session):
    steps = Steps(200)
    uid, data_dir = session["uid"], session["dir"]

    def console() -> None:
        ask(data_dir, uid, Command.PAUSE)
        wait_until(lambda: status(data_dir, uid) == SessionStatus.PAUSED, 10)
        session["control"].terminate()

    assert run_with_console(session, steps, console) == StopCause.INTERRUPTED
    assert applied(session["docs"]) == [("pause", "ada")]


def test_bad_requests_are_refused_and_write_nothing(session):
    uid, data_dir = session["uid"], session["dir"]
    with pytest.raises(UnknownSession, match=f"no session {uid} was run from"):
        ask(data_dir, uid, Command.PAUSE)
    with pytest.raises(UnknownSession, match="not a session uid"):
        ask(data_dir, "../etc", Command.PAUSE)
    with pytest.raises(ValueError, match="'jump' is not a valid Command"):
        request(data_dir, ControlRequest(uid, "jump", "ada", 0.0))  # type: ignore[arg-type]
    assert not control_dir(data_dir).exists()

    def console() -> None:
        request_file = control_dir(data_dir) / f"{uid}.json"
        with pytest.raises(NotApplicable, match="is running: cannot resume"):
            ask(data_dir, uid, Command.RESUME)
        with pytest.raises(ControlError, match="'who' is empty"):
            ask(data_dir, uid, Command.PAUSE, "  ")
        assert not request_file.exists()
        ask(data_dir, uid, Command.STOP)

    assert run_with_console(session, Steps(200), console) == StopCause.REQUESTED


def test_a_state_left_by_a_dead_process_reads_stopped(tmp_path):
    uid = uuid.uuid4().hex
    control_dir(tmp_path).mkdir()
    (control_dir(tmp_path) / f"{uid}.state.json").write_text(json.dumps(
        {"status": "running", "pid": 2**22 + 1, "started": 0.0, "since": 0.0}))
    assert status(tmp_path, uid) == SessionStatus.STOPPED
    with pytest.raises(NotApplicable, match="is stopped"):
        ask(tmp_path, uid, Command.PAUSE)
