"""An autonomous session of H simulated hours over the real IOC and an embedded Tiled server.

Run: ``python benchmarks/bench_session.py [--hours 72] [--seed 0] [--policy heuristic]
[--durable]`` from the repository root. Starts its own IOC (subprocess, ``Sim:TimeScale`` 0,
private loopback CA ports) and Tiled (temporary directory), runs ``autonomous_session`` with
the session writer (or, with ``--durable``, as ``spm-bluesky run`` does: every document
fsynced to the journal, drained to Tiled in the background, safety marks first), and
prints a table: wall time, images, images/s, good fraction, episodes, RSS of this process at
the start and end, the IOC's ``Scan:FrameCounter`` against the images in Tiled, and a
content check: an independent CA client (caproto) hashes every frame
the IOC serves, and the hashes of the images read back from Tiled must be the same multiset.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import os
import tempfile
import threading
import time
from pathlib import Path

from spm_bluesky.services.epics_env import use_private_loopback_ca

use_private_loopback_ca()  # before any CA client starts in this process

import bluesky.plan_stubs as bps  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402
from bluesky import RunEngine  # noqa: E402
from caproto.threading.client import Context  # noqa: E402
from ophyd_async.core import init_devices  # noqa: E402

from spm_bluesky.autonomy.writer import session_writer  # noqa: E402
from spm_bluesky.devices.stm import STM  # noqa: E402
from spm_bluesky.evaluation.session import SimulatedIoc  # noqa: E402
from spm_bluesky.ml.agent.policies import policy_by_name  # noqa: E402
from spm_bluesky.ml.assessor import load_assessor  # noqa: E402
from spm_bluesky.plans.autonomous import autonomous_session  # noqa: E402
from spm_bluesky.storage import (  # noqa: E402
    TiledConfig,
    connect,
    read_image_stream,
    runs_by_session,
    start_server,
)
from spm_bluesky.storage.durable import durable_path  # noqa: E402

PIXELS = 64


def digest(values: np.ndarray) -> str:
    """Hash of one frame's float32 values."""
    return hashlib.sha1(np.ascontiguousarray(values, dtype=np.float32).tobytes()).hexdigest()


class ServedHashes:
    """Hashes of every frame the IOC publishes, from an independent caproto client."""

    def __init__(self, prefix: str) -> None:
        self.hashes: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._initial = True
        self._context = Context()
        (image,) = self._context.get_pvs(prefix + "Scan:Image", timeout=5)
        image.wait_for_connection(timeout=10)
        self._subscription = image.subscribe(data_type="native")
        self._subscription.add_callback(self._on_image)

    def _on_image(self, sub, response) -> None:
        with self._lock:
            if self._initial:
                self._initial = False
                return
            self.hashes[digest(response.data[: PIXELS * PIXELS])] += 1

    def close(self) -> None:
        self._subscription.clear()
        self._context.disconnect()


def stored_hashes(client, session: str) -> collections.Counter[str]:
    """Hashes of every image of the session in Tiled (last take per seq_num)."""
    hashes: collections.Counter[str] = collections.Counter()
    for run in runs_by_session(client, session).values():
        if run.metadata["start"]["plan_name"] in ("autonomous_scan", "condition_tip"):
            for image in read_image_stream(run, "stm-scan-image").images:
                hashes[digest(image.ravel())] += 1
    return hashes


def mib(process: psutil.Process) -> float:
    """Resident memory of a process (MiB)."""
    return process.memory_info().rss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=72.0, help="simulated hours")
    parser.add_argument("--seed", type=int, default=0, help="twin seed")
    parser.add_argument("--policy", default="heuristic", choices=("agent", "heuristic",
                                                                    "random"))
    parser.add_argument("--run-images", type=int, default=50, help="images per scan run")
    parser.add_argument("--durable", action="store_true",
                        help="documents through the journal and its drain, as `run` has them")
    args = parser.parse_args()

    me = psutil.Process()
    data_dir = Path(tempfile.mkdtemp(prefix="bench-session-"))
    ioc = SimulatedIoc.start(args.seed, int(os.environ["EPICS_CA_SERVER_PORT"]), data_dir)
    server = start_server(TiledConfig(data_dir))
    try:
        client = connect(server.uri, server.api_key)
        RE = RunEngine(call_returns_result=True)
        documents = contextlib.ExitStack()
        safety = None
        if args.durable:
            path = documents.enter_context(durable_path(
                data_dir, lambda: connect(server.uri, server.api_key)))
            RE.subscribe(path)
            safety = path.mark
        else:
            RE.subscribe(session_writer(client))
        with init_devices():
            stm = STM(ioc.prefix, name="stm", sim=True)
        assessor, policy = load_assessor(), policy_by_name(args.policy, seed=args.seed)
        served = ServedHashes(ioc.prefix)
        rss = [mib(me)]
        RE.subscribe(lambda name, doc: rss.append(mib(me)), "stop")
        start = time.perf_counter()
        with documents:
            summary = RE(autonomous_session(stm, assessor, policy, hours=args.hours,
                                            run_images=args.run_images,
                                            safety=safety)).plan_result
            wall = time.perf_counter() - start
        stored_after = time.perf_counter() - start  # the drain has emptied the journal
        frame_counter = RE(bps.rd(stm.scan.frame_counter)).plan_result
        time.sleep(1.0)  # the last monitors
        served.close()
        stored = stored_hashes(client, summary["session_uid"])
    finally:
        server.stop()
        ioc.stop()

    images = summary["images"]
    hours = summary["elapsed_hours"]
    rows = [
        ("simulated hours", f"{hours:.2f}"),
        ("wall time (s)", f"{wall:.0f}"),
        ("wall time until Tiled holds every document (s)", f"{stored_after:.0f}"),
        ("images", f"{images}"),
        ("images/s", f"{images / wall:.1f}"),
        ("simulated hours per wall minute", f"{hours / wall * 60:.2f}"),
        ("extrapolated wall time for 72 h (min)", f"{72 / hours * wall / 60:.1f}"),
        ("good fraction (kept / images)", f"{summary['good_images'] / images:.3f}"),
        ("conditioning episodes / actions", f"{summary['episodes']} / {summary['actions']}"),
        ("crashes", f"{summary['crashes']}"),
        ("runs", f"{summary['runs']}"),
        ("RSS start / after 10 % of runs / end (MiB)",
         f"{rss[0]:.0f} / {rss[len(rss) // 10]:.0f} / {rss[-1]:.0f}"),
        ("IOC FrameCounter / images in Tiled", f"{frame_counter} / {sum(stored.values())}"),
        ("content: Tiled images == served frames", f"{stored == served.hashes}"),
    ]
    print(f"\nautonomous session, seed {args.seed}, policy {args.policy}, "
          f"{'journal and drain' if args.durable else 'session writer'}, "
          f"{args.run_images} images per scan run, load average "
          f"{os.getloadavg()[0]:.1f}\n")
    print("| measure | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
