"""Images per second through IOC -> CA -> RunEngine -> journal (fsync) -> drain -> Tiled,
side by side in one run with the IOC alone (the same RunEngine and plan, no subscriber),
64 px frames at TimeScale 0. The durable rate counts until Tiled holds every image (the
drain's catch-up included); the lag is how long after the last image's event Tiled held it.

Run: ``python benchmarks/bench_durable_chain.py [--images N]``. Starts its own IOC and Tiled
server in a temporary directory.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from spm_bluesky.services.epics_env import use_private_loopback_ca

use_private_loopback_ca()  # before any CA client starts in this process

from bench_chain import start_ioc, stm_alone_rate  # noqa: E402
from bluesky import RunEngine  # noqa: E402
from bluesky.plans import count  # noqa: E402

from spm_bluesky.storage import TiledConfig, start_server  # noqa: E402
from spm_bluesky.storage.durable import durable_path  # noqa: E402

PIXELS = 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=500)
    args = parser.parse_args()
    ioc = start_ioc()
    try:
        with tempfile.TemporaryDirectory() as tmp, start_server(
                TiledConfig(Path(tmp) / "tiled")) as server:
            stm, alone = stm_alone_rate(args.images, PIXELS)

            RE = RunEngine()
            with durable_path(Path(tmp), server.client) as path:
                RE.subscribe(path)
                RE(count([stm.scan], num=5))
                path.wait_stored(60)
                start = time.perf_counter()
                (uid,) = RE(count([stm.scan], num=args.images))
                emitted = time.perf_counter()
                assert path.wait_stored(600)
                stored = time.perf_counter()
            run = server.client()[uid]
            held = len(run["primary"].base["internal"].read())
            assert held == args.images, held
            journal_rate = args.images / (emitted - start)
            durable = args.images / (stored - start)
            print(f"{args.images} images of {PIXELS} px, one run")
            print("| chain | images/s | ratio to the IOC alone |")
            print("|---|---|---|")
            print(f"| IOC alone (RunEngine, no subscriber) | {alone:.1f} | 1.00 |")
            print(f"| IOC -> RunEngine -> journal (fsync) | {journal_rate:.1f} | "
                  f"{journal_rate / alone:.2f} |")
            print(f"| IOC -> RunEngine -> journal -> Tiled (until stored) | {durable:.1f} | "
                  f"{durable / alone:.2f} |")
            print(f"Tiled held the last image {stored - emitted:.2f} s after its event")
    finally:
        ioc.terminate()
        ioc.wait(10)


if __name__ == "__main__":
    main()
