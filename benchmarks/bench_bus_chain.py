"""Images per second of the chain in facility mode (IOC -> RunEngine -> journal -> RabbitMQ
-> Tiled consumer -> Tiled), side by side in one run with the embedded default (journal ->
drain -> Tiled) and with the IOC alone (the same RunEngine and plan, no subscriber), 64 px
frames at TimeScale 0. "Until stored" counts until Tiled holds the run with its stop
document; the lag is how long after the last event that was.

Run: ``python benchmarks/bench_bus_chain.py [--images N] [--bus URL]``. Needs a RabbitMQ
broker (default amqp://guest:guest@127.0.0.1:5672/); starts its own IOC, Tiled server and
consumer process in a temporary directory, on an exchange of its own that it deletes after.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from spm_bluesky.services.epics_env import use_private_loopback_ca

use_private_loopback_ca()  # before any CA client starts in this process

import pika  # noqa: E402
from bench_chain import start_ioc, stm_alone_rate  # noqa: E402
from bluesky import RunEngine  # noqa: E402
from bluesky.plans import count  # noqa: E402

from spm_bluesky.storage import TiledConfig, start_server  # noqa: E402
from spm_bluesky.storage.bus import READY, URL_ENV, parse_bus_url, tiled_queue  # noqa: E402
from spm_bluesky.storage.bus_publish import bus_path  # noqa: E402
from spm_bluesky.storage.durable import durable_path  # noqa: E402

PIXELS = 64


def _wait_stored(client, uid: str, timeout: float = 600.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if uid in client and "stop" in client[uid].metadata:
            return time.perf_counter()
        time.sleep(0.02)
    raise TimeoutError(f"run {uid} not stored within {timeout} s")


def _start_consumer(server, url: str, exchange: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, URL_ENV: url, "SPM_TILED_API_KEY": server.api_key,
           "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "spm_bluesky.storage.bus_consumer", "--tiled-uri",
             server.uri, "--exchange", exchange], stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 60
    while READY not in log.read_text():
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    return process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--bus", default="amqp://guest:guest@127.0.0.1:5672/")
    args = parser.parse_args()
    address = parse_bus_url(args.bus)
    exchange = f"bench-{uuid.uuid4().hex[:8]}"
    ioc = start_ioc()
    consumer = None
    try:
        with tempfile.TemporaryDirectory() as tmp, start_server(
                TiledConfig(Path(tmp) / "tiled")) as server:
            client = server.client()
            stm, alone = stm_alone_rate(args.images, PIXELS)

            rates = {}
            RE = RunEngine()
            with durable_path(Path(tmp) / "embedded", server.client) as path:
                token = RE.subscribe(path)
                RE(count([stm.scan], num=5))
                path.wait_stored(60)
                start = time.perf_counter()
                (uid,) = RE(count([stm.scan], num=args.images))
                emitted = time.perf_counter()
                stored = _wait_stored(client, uid)
                RE.unsubscribe(token)
            rates["journal"] = (args.images / (emitted - start),
                                args.images / (stored - start), stored - emitted)

            consumer = _start_consumer(server, address.full, exchange, Path(tmp) / "consumer.log")
            with bus_path(Path(tmp) / "facility", address, exchange) as path:
                token = RE.subscribe(path)
                (warm,) = RE(count([stm.scan], num=5))
                _wait_stored(client, warm)
                start = time.perf_counter()
                (uid,) = RE(count([stm.scan], num=args.images))
                emitted = time.perf_counter()
                stored = _wait_stored(client, uid)
                RE.unsubscribe(token)
            rates["bus"] = (args.images / (emitted - start),
                            args.images / (stored - start), stored - emitted)
            held = len(client[uid]["primary"].base["internal"].read())
            assert held == args.images, held

            print(f"{args.images} images of {PIXELS} px, one run each")
            print("| chain | images/s | ratio to the IOC alone |")
            print("|---|---|---|")
            print(f"| IOC alone (RunEngine, no subscriber) | {alone:.1f} | 1.00 |")
            for label, key in (("journal -> drain -> Tiled", "journal"),
                               ("journal -> RabbitMQ (confirmed) -> consumer -> Tiled", "bus")):
                emit, store, lag = rates[key]
                print(f"| {label}: emitted | {emit:.1f} | {emit / alone:.2f} |")
                print(f"| {label}: until stored | {store:.1f} | {store / alone:.2f} |")
            for key, (_, _, lag) in rates.items():
                print(f"{key}: Tiled held the run {lag:.2f} s after its last event")
    finally:
        if consumer is not None:
            consumer.terminate()
            consumer.wait(10)
        ioc.terminate()
        ioc.wait(10)
        connection = pika.BlockingConnection(pika.URLParameters(address.full))
        channel = connection.channel()
        channel.queue_delete(tiled_queue(exchange))
        channel.exchange_delete(exchange)
        connection.close()


if __name__ == "__main__":
    main()
