"""Facility mode on a real RabbitMQ broker (127.0.0.1:5672, guest/guest): the session
(``spm-bluesky run``, its own process) publishes every document; the Tiled consumer, a
process of its own, is killed (SIGKILL) mid-session and ``spm-bluesky up`` starts it again
alone; the session never stops, and at the end Tiled holds every image the IOC served, by
count and by content (independent CA hashes), none twice.

Skipped, with the reason, when no broker answers at 127.0.0.1:5672."""

from __future__ import annotations

import contextlib
import signal
import socket
import uuid

import numpy as np
import psutil
import pytest

from spm_bluesky.services.launch import UpOptions, client_ca_env, down, environ_set, up
from spm_bluesky.storage import connect, runs_by_session
from spm_bluesky.storage.bus import tiled_queue
from tests.session_helpers import kill_leftovers, read_state, spm, wait_until
from tests.system.test_chain import ServedFrames
from tests.system.test_durable_outage import _Ioc
from tests.system.test_recovery import run_cli, session_images, session_of

pytestmark = pytest.mark.integration

BROKER = "amqp://guest:guest@127.0.0.1:5672/"


def _broker_answers() -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", 5672), 1.0):
        return True
    return False


needs_broker = pytest.mark.skipif(not _broker_answers(),
                                  reason="no RabbitMQ broker at 127.0.0.1:5672")


@pytest.fixture
def exchange():
    """An exchange (and Tiled queue) of this test alone, deleted afterwards."""
    import pika

    name = f"spm-test-{uuid.uuid4().hex[:8]}"
    yield name
    connection = pika.BlockingConnection(pika.URLParameters(BROKER))
    channel = connection.channel()
    channel.queue_delete(tiled_queue(name))
    channel.exchange_delete(name)
    connection.close()


@needs_broker
@pytest.mark.timeout(300)
def test_consumer_killed_and_restarted_mid_session_loses_and_doubles_nothing(tmp_path,
                                                                             exchange):
    data_dir = tmp_path / "data"
    state, _ = up(UpOptions(data_dir=data_dir, seed=47, bus=BROKER, bus_exchange=exchange,
                             console=False))
    try:
        recorded = read_state(data_dir)
        assert recorded["bus_url"] == "amqp://guest@127.0.0.1:5672/"  # no password
        assert "guest:guest" not in (data_dir / "services.json").read_text()
        assert state.bus_consumer is not None
        with environ_set(client_ca_env(state.epics_env)):
            served = ServedFrames(_Ioc(state.prefix))
        log = tmp_path / "run.log"
        session_process = run_cli("--images", "60", data_dir=data_dir, log=log)
        session = session_of(log, session_process)
        wait_until(lambda: len(served.frames) >= 25, 120, "25 frames", poll=0.2)

        consumer = psutil.Process(state.bus_consumer.pid)
        consumer.send_signal(signal.SIGKILL)  # mid-run (runs of 20 images): no goodbye
        consumer.wait(10)
        at_kill = len(served.frames)
        status = spm("status", "--data-dir", data_dir)
        assert status.returncode == 1 and "down: consumer;" in status.stdout, status.stdout
        wait_until(lambda: len(served.frames) >= at_kill + 15, 120, "frames without a consumer",
                   poll=0.2)
        assert session_process.poll() is None, log.read_text()

        # `up` starts the consumer alone (the password it kept); IOC and Tiled run on.
        restarted = spm("up", "--data-dir", data_dir)
        assert restarted.returncode == 0, restarted.stderr
        after = read_state(data_dir)
        assert after["ioc"] == recorded["ioc"] and after["tiled"] == recorded["tiled"]
        assert after["bus_consumer"]["pid"] != recorded["bus_consumer"]["pid"]
        assert session_process.wait(180) == 0, log.read_text()  # the session ran to its end
        served.close()
        out = log.read_text()
        assert "facility mode" in out and "Traceback" not in out

        client = connect(state.tiled_uri, state.api_key)
        digests = [frame[: 64 * 64].astype(np.float32).tobytes() for frame in served.frames]

        def all_stored() -> bool:
            runs = runs_by_session(client, session).values()
            return (bool(runs) and all("stop" in run.metadata for run in runs)
                    and len(session_images(client, session)) >= len(digests))

        wait_until(all_stored, 90, "the consumer to store the session", poll=0.2)
        stored = [image.astype(np.float32).tobytes() for image in session_images(client, session)]
        assert len(stored) == len(digests) == 60, (len(stored), len(digests))
        assert len(set(stored)) == len(stored), "an image is stored twice"
        assert sorted(stored) == sorted(digests), "Tiled holds other images than served"
        consumer_log = (data_dir / "bus-consumer.log").read_text()
        assert consumer_log.count("ready: consuming") == 2
        assert "guest:guest" not in consumer_log + out + status.stdout
    finally:
        down(data_dir)
        kill_leftovers(data_dir)


def test_up_with_a_broker_that_does_not_answer_is_one_line_and_starts_nothing(tmp_path):
    data_dir = tmp_path / "data"
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = spm("up", "--data-dir", data_dir, "--bus", f"amqp://guest:topsecret@127.0.0.1:{port}/")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "does not answer" in lines[0] and "nothing started" in lines[0]
    assert "topsecret" not in result.stderr + result.stdout
    assert not (data_dir / "services.json").exists() and not (data_dir / "bus.secret").exists()
    assert not (data_dir / "ioc.log").exists()  # the IOC was never started
