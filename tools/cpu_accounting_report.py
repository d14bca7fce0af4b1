"""The CPU a test run spent, by test file and by kind of process, from the records that
``tools/cpu_accounting/sitecustomize.py`` wrote (see its docstring for how to make them).

A pytest worker's record holds its own CPU and that of the children it reaped (the commands a
test ran, a server a fixture stopped), split by test. A process whose parent is not a worker
(a service started by ``spm-bluesky up``, then left to init) is added to the test that started
it. Children reaped by such a process are counted twice: the figures are for ranking.

Usage: ``python tools/cpu_accounting_report.py DIR [--top 30]``
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import Any


def load(directory: Path) -> list[dict[str, Any]]:
    """Every process record in ``directory``."""
    return [json.loads(path.read_text()) for path in sorted(directory.glob("*.json"))]


def program(record: dict[str, Any]) -> str:
    """The program a process ran: the module of ``python -m MODULE``, else the script's name."""
    first = Path(record["argv"][0]) if record["argv"] else Path("python")
    return first.parent.name if first.name == "__main__.py" else first.name


def is_pytest(record: dict[str, Any]) -> bool:
    """True for pytest's own process (with xdist, the controller of the workers)."""
    return program(record) == "pytest"


def worker_pids(records: list[dict[str, Any]]) -> set[int]:
    """The processes that ran tests: xdist's workers (execnet starts each as ``python -c``
    from pytest's own process; a test's own ``python -c`` child is not one), else pytest
    itself (``-n 0``)."""
    pytest_pids = {r["pid"] for r in records if is_pytest(r)}
    workers = {r["pid"] for r in records
               if r["argv"][:1] == ["-c"] and r["ppid"] in pytest_pids}
    return workers or pytest_pids


def kind(record: dict[str, Any], workers: set[int]) -> str:
    """A short name for what the process was."""
    name, args = program(record), record["argv"][1:]
    if record["pid"] in workers:
        return "pytest worker"
    if name == "tiled" and args[:1] == ["serve"]:
        return "tiled serve"
    if name in ("spm-bluesky", "spm_bluesky") and args and not args[0].startswith("-"):
        return f"spm-bluesky {args[0]}"
    return " ".join([name, *args])[:50]


def report(records: list[dict[str, Any]], top: int) -> str:
    """Tables of CPU seconds by test file and by kind of process."""
    workers = worker_pids(records)
    # With workers, pytest's own record is theirs again (it reaps them): left out.
    records = [r for r in records if r["pid"] in workers or not is_pytest(r)]
    by_file: Counter[str] = Counter()
    by_kind: Counter[str] = Counter()
    started: Counter[str] = Counter()
    for record in records:
        if record["pid"] in workers:
            for test, seconds in record["by_test"].items():
                by_file[test.split("::")[0] or "(outside tests)"] += seconds
        elif record["ppid"] not in workers:
            test = next(iter(record["by_test"]), "")
            by_file[test.split("::")[0] or "(outside tests)"] += record["cpu_s"]
        name = kind(record, workers)
        by_kind[name] += record["cpu_s"]
        started[name] += 1
    lines = [f"{sum(by_file.values()):.0f} CPU s in all", "", "| test file | CPU s |",
             "|---|---:|"]
    lines += [f"| {name} | {seconds:.1f} |" for name, seconds in by_file.most_common(top)]
    lines += ["", "| process (its reaped children included) | started | CPU s | each |",
              "|---|---:|---:|---:|"]
    lines += [f"| {name} | {started[name]} | {seconds:.1f} | {seconds / started[name]:.2f} |"
              for name, seconds in by_kind.most_common(top)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    print(report(load(args.directory), args.top))


if __name__ == "__main__":
    main()
