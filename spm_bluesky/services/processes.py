"""Stopping a background service process that this process started."""

from __future__ import annotations

import contextlib
import subprocess

#: Seconds a service gets to stop after SIGTERM before it is killed.
STOP_GRACE_S = 10.0


def stop_process(process: subprocess.Popen[bytes], grace_s: float = STOP_GRACE_S) -> None:
    """Stop ``process`` (SIGTERM, then SIGKILL after ``grace_s``) and reap it; nothing if it
    has already exited."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait()
