"""Run pytest and report, per test, the CPU seconds it cost: its process and every child.

Wall time says little on a shared or loaded machine, and the suite on CI is CPU-bound, so
this measures what a test costs in CPU: user plus system time of the pytest process, of
the children it reaped (``RUSAGE_CHILDREN``: an IOC or Tiled server that was stopped and
waited for) and of the children still alive (psutil, recursive, each with the time of the
descendants it reaped itself). The sum of those three only ever grows, so its change from
the start of a test's setup to the end of its teardown is the test's cost; a module- or
session-scoped fixture is charged to the test that starts it and the one that stops it.
A process that outlives its parent and is adopted by init escapes the count.

Usage (from the repository root; the arguments go to pytest; ``-n 0`` is added, one
process measures correctly)::

    python tools/test_cpu_profile.py tests/system/test_kill_soak.py
    python tools/test_cpu_profile.py --cpu-json /tmp/cpu.jsonl --cpu-top 50 tests

It prints the ``--cpu-top`` (30) most costly tests and the total, and with ``--cpu-json``
appends one JSON object per test (``nodeid``, ``cpu_s``, ``wall_s``, ``outcome``).
"""

from __future__ import annotations

import json
import resource
import sys
import time
from collections.abc import Generator
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil
import pytest


def _rusage_seconds(who: int) -> float:
    """User plus system CPU seconds of this process or of its reaped children."""
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _live_children_seconds() -> float:
    """CPU seconds of every live descendant, each including what it reaped itself."""
    total = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            times = child.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


def tree_cpu_seconds() -> float:
    """All CPU this process and its descendants have used so far (monotonic, up to races)."""
    return (
        _rusage_seconds(resource.RUSAGE_SELF)
        + _rusage_seconds(resource.RUSAGE_CHILDREN)
        + _live_children_seconds()
    )


@dataclass(frozen=True)
class TestCost:
    """What one test (setup, call and teardown) cost."""

    nodeid: str
    cpu_s: float
    wall_s: float
    outcome: str


class CpuProfilePlugin:
    """A pytest plugin that records a :class:`TestCost` per test and reports the costliest."""

    def __init__(self, top: int, json_path: Path | None) -> None:
        self.top = top
        self.json_path = json_path
        self.costs: list[TestCost] = []
        self._outcomes: dict[str, str] = {}
        self._session_start_cpu = tree_cpu_seconds()

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> Generator[None, None, None]:
        cpu_before, wall_before = tree_cpu_seconds(), time.monotonic()
        yield
        cost = TestCost(
            nodeid=item.nodeid,
            cpu_s=round(tree_cpu_seconds() - cpu_before, 2),
            wall_s=round(time.monotonic() - wall_before, 2),
            outcome=self._outcomes.pop(item.nodeid, "unknown"),
        )
        self.costs.append(cost)
        if self.json_path is not None:
            with self.json_path.open("a") as stream:
                stream.write(json.dumps(asdict(cost)) + "\n")

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call" or report.outcome != "passed":
            self._outcomes.setdefault(report.nodeid, report.outcome)

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        write = terminalreporter.write_line
        ranked = sorted(self.costs, key=lambda cost: cost.cpu_s, reverse=True)
        write(f"\n===== CPU seconds per test (process and children), top {self.top} =====")
        for cost in ranked[: self.top]:
            write(f"{cost.cpu_s:9.2f} cpu {cost.wall_s:9.2f} wall  {cost.outcome:7}  {cost.nodeid}")
        in_tests = sum(cost.cpu_s for cost in self.costs)
        session = tree_cpu_seconds() - self._session_start_cpu
        write(
            f"{len(self.costs)} tests: {in_tests:.1f} CPU s in tests, "
            f"{session:.1f} CPU s since the plugin loaded (collection included)"
        )


def _pop_option(args: list[str], name: str, default: str | None) -> str | None:
    """Remove ``name VALUE`` from ``args`` and return VALUE (or ``default``)."""
    if name not in args:
        return default
    index = args.index(name)
    if index + 1 >= len(args):
        raise SystemExit(f"{name} needs a value")
    value = args[index + 1]
    del args[index : index + 2]
    return value


def main(argv: list[str]) -> int:
    """Run pytest in one process with the plugin; return pytest's exit code."""
    args = list(argv)
    top_text = _pop_option(args, "--cpu-top", "30")
    json_text = _pop_option(args, "--cpu-json", None)
    try:
        top = int(top_text or "30")
    except ValueError:
        raise SystemExit(f"--cpu-top needs an integer, not {top_text!r}") from None
    plugin = CpuProfilePlugin(top, Path(json_text) if json_text else None)
    return int(pytest.main(["-n", "0", "-p", "no:cacheprovider", *args], plugins=[plugin]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
