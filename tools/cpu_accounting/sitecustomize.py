"""Per-process CPU accounting for a test run, loaded by every Python process it starts.

``tools/test_cpu_profile.py`` charges a test with its own process and the children it reaps,
so the services that ``spm-bluesky up`` starts and leaves behind (the IOC, Tiled, the
console) escape it. This file closes that gap: put its folder first on ``PYTHONPATH`` and
name an output folder in ``CPU_ACCOUNT_DIR``, and every Python process started under it
(pytest's workers, each ``spm-bluesky`` command, every service) writes, once a second and at
exit, its command line, parent, and CPU seconds (user plus system, its own and its reaped
children's) split by the test that was running (``PYTEST_CURRENT_TEST``, which child
processes inherit from the test that started them)::

    CPU_ACCOUNT_DIR=/tmp/cpu PYTHONPATH=tools/cpu_accounting python -m pytest -q
    python tools/cpu_accounting_report.py /tmp/cpu

A process killed with SIGKILL keeps its last one-second record. The variable's name has no
``SPM_`` prefix because the tests strip those from the environments of the commands they run.
"""

from __future__ import annotations

import os

ACCOUNT_DIR_ENV = "CPU_ACCOUNT_DIR"


def _start(directory: str) -> None:
    """Record this process's CPU into ``directory`` every second and at exit."""
    import atexit
    import json
    import resource
    import sys
    import threading
    import time

    started = time.time()
    by_test: dict[str, float] = {}
    last = [0.0]

    def cpu_seconds() -> float:
        own = resource.getrusage(resource.RUSAGE_SELF)
        reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + reaped.ru_utime + reaped.ru_stime

    def record() -> None:
        try:
            now = cpu_seconds()
            test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0]
            by_test[test] = by_test.get(test, 0.0) + now - last[0]
            last[0] = now
            data = {"pid": os.getpid(), "ppid": os.getppid(), "argv": sys.argv[:8],
                    "start": started, "end": time.time(), "cpu_s": now, "by_test": by_test}
            partial = os.path.join(directory, f".{os.getpid()}.tmp")
            with open(partial, "w") as out:
                json.dump(data, out)
            os.replace(partial, os.path.join(directory, f"{os.getpid()}.json"))
        except Exception:  # a measurement must never break the process it measures
            pass

    def every_second() -> None:
        while True:
            time.sleep(1.0)
            record()

    threading.Thread(target=every_second, daemon=True, name="cpu-accounting").start()
    atexit.register(record)


if _directory := os.environ.get(ACCOUNT_DIR_ENV):
    _start(_directory)
