"""Storage: a real Tiled server (subprocess), real RunEngine, real TiledWriter, real detector.

The detector is an in-process ophyd-async device of soft signals
(spm_bluesky.devices.sim_detector), so
these tests do not need the IOC.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import bluesky.preprocessors as bpp
import httpx
import numpy as np
import psutil
import pytest
from bluesky import RunEngine
from bluesky.suspenders import SuspendBoolLow
from ophyd import Signal
from ophyd_async.core import AsyncStatus, init_devices, soft_signal_rw

from spm_bluesky.devices.sim_detector import SoftImageDetector
from spm_bluesky.storage import (
    TiledConfig,
    TiledServer,
    TiledServerError,
    connect,
    dedupe_events,
    feed_documents,
    load_backup,
    load_or_create_api_key,
    make_writer,
    read_image_stream,
    runs_by_session,
    start_server,
    subscribe_writer,
)
from spm_bluesky.storage.server import (
    server_environment,
    tiled_service_config,
    write_tiled_config,
)

REPO = Path(__file__).resolve().parents[2]
PIXELS = 64
Docs = list[tuple[str, dict[str, Any]]]


# --- configuration (no server) ---------------------------------------------------------------


def test_api_key_is_generated_once_and_private(tmp_path: Path) -> None:
    key = load_or_create_api_key(tmp_path)
    assert key == load_or_create_api_key(tmp_path)
    assert len(key) >= 32 and key.isalnum()
    assert stat.S_IMODE((tmp_path / "api_key").stat().st_mode) == 0o600
    config_file = write_tiled_config(TiledConfig(tmp_path), key)
    assert stat.S_IMODE(config_file.stat().st_mode) == 0o600


def test_service_config_is_loopback_keyed_bluesky_catalog(tmp_path: Path) -> None:
    cfg = tiled_service_config(TiledConfig(tmp_path), "abc123")
    assert cfg["uvicorn"]["host"] == "127.0.0.1"
    assert cfg["authentication"] == {
        "single_user_api_key": "abc123",
        "allow_anonymous_access": False,
    }
    assert cfg["catalog"]["specs"] == [{"name": "CatalogOfBlueskyRuns", "version": "3.0"}]
    assert cfg["catalog"]["uri"] == f"sqlite:///{tmp_path.resolve() / 'catalog.db'}"
    assert cfg["media_types"]["BlueskyRun"]["application/json-seq"] == (
        "bluesky_tiled_plugins.exporters:json_seq_exporter"
    )
    pg = TiledConfig(tmp_path, catalog_uri="postgresql+asyncpg://u@db:5432/runs")
    assert pg.resolved_tabular_uri == "postgresql://u@db:5432/runs"
    with pytest.raises(ValueError, match="letters and digits"):
        TiledConfig(tmp_path, api_key="not-a-valid-key!")


def test_tiled_environment_cannot_override_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TILED_CATALOG_URI", "sqlite:////tmp/elsewhere.db")
    monkeypatch.setenv("TILED_UVICORN", '{"host": "0.0.0.0"}')
    env = server_environment()
    assert not [k for k in env if k.startswith("TILED_")]
    assert env["PATH"] == os.environ["PATH"]


def test_taken_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(TiledServerError,
                           match=rf"port {port} \(TCP\) on 127.0.0.1 is taken"):
            start_server(TiledConfig(tmp_path, port=port))


def test_server_that_does_not_come_up_reports_its_log(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port where no database listens
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    config = TiledConfig(tmp_path, catalog_uri=f"postgresql://postgres@127.0.0.1:{closed}/x")
    with pytest.raises(TiledServerError, match="exited with status") as err:
        start_server(config)
    assert "Connect call failed" in str(err.value)
    assert str(tmp_path.resolve() / "tiled_server.log") in str(err.value)


# --- a real server, a real RunEngine ----------------------------------------------------------


@pytest.fixture
def RE() -> RunEngine:
    return RunEngine({})


@pytest.fixture
def detector(RE: RunEngine) -> SoftImageDetector:
    with init_devices():
        det = SoftImageDetector(pixels=PIXELS, seed=3)
    return det


def acquire(det: SoftImageDetector, p_good: Any, n: int, **md: Any):
    """A small run like the autonomy's: images in 'primary', a score in 'assessment'."""

    @bpp.run_decorator(md={"plan_name": "acquire_test", **md})
    def inner():
        for i in range(n):
            yield from bps.trigger_and_read([det])
            yield from bps.mv(p_good, 0.5 + 0.1 * i)
            yield from bps.trigger_and_read([p_good], name="assessment")

    return (yield from inner())


@dataclass
class Recorded:
    uids: list[str]
    live: dict[str, Docs]
    sessions: tuple[str, str]
    server: TiledServer


@pytest.fixture(scope="module")
def recorded(tiled_server: TiledServer) -> Recorded:
    """Three runs through a real RunEngine into Tiled: two in session A, one in session B."""
    RE = RunEngine({})
    with init_devices():
        det = SoftImageDetector(pixels=PIXELS, seed=1)
        p_good = soft_signal_rw(float, 0.0)
    subscribe_writer(RE, tiled_server.client())
    live: dict[str, Docs] = defaultdict(list)
    current: list[str] = []

    def record(name: str, doc: dict[str, Any]) -> None:
        if name == "start":
            current[:] = [doc["uid"]]
        live[current[0]].append((name, doc))

    RE.subscribe(record)
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    meta = {"sample": "Au(111)", "model_ids": {"assessor": "test-0"}, "twin_seed": 7}
    uids = [
        *RE(acquire(det, p_good, 3), session_uid=a, **meta),
        *RE(acquire(det, p_good, 2), session_uid=b, **meta),
        *RE(acquire(det, p_good, 2), session_uid=a, **meta),
    ]
    return Recorded(uids, dict(live), (a, b), tiled_server)


def live_images(docs: Docs, field: str = "det-image") -> np.ndarray:
    return np.stack(
        [doc["data"][field] for name, doc in docs if name == "event" and field in doc["data"]]
    )


@pytest.mark.integration
def test_runs_by_uid_latest_and_session(
    recorded: Recorded, tiled_client, RE: RunEngine, detector: SoftImageDetector
) -> None:
    subscribe_writer(RE, tiled_client)
    (newest,) = RE(bp.count([detector], num=1))
    assert tiled_client[-1].start["uid"] == newest
    a, b = recorded.sessions
    for uid in recorded.uids:
        assert tiled_client[uid].start["uid"] == uid
    assert [r.start["uid"] for r in runs_by_session(tiled_client, a).values()] == [
        recorded.uids[0],
        recorded.uids[2],
    ]
    assert [r.start["uid"] for r in runs_by_session(tiled_client, b).values()] == [recorded.uids[1]]
    assert len(runs_by_session(tiled_client, str(uuid.uuid4()))) == 0


@pytest.mark.integration
def test_images_and_metadata_are_stored(recorded: Recorded, tiled_client) -> None:
    uid = recorded.uids[0]
    run = tiled_client[uid]
    start = run.start
    assert start["session_uid"] == recorded.sessions[0]
    assert start["plan_name"] == "acquire_test"
    assert (start["sample"], start["model_ids"], start["twin_seed"]) == (
        "Au(111)",
        {"assessor": "test-0"},
        7,
    )
    assert run.stop["exit_status"] == "success"
    assert set(run) == {"primary", "assessment"}

    node = run["primary"]["det-image"]  # the array node itself, not the xarray view
    assert node.shape == (3, PIXELS, PIXELS) and node.dtype == np.float32
    assert node.metadata["units"] == "m"
    data_key = run["primary"].metadata["data_keys"]["det-image"]
    assert data_key["shape"] == [PIXELS, PIXELS] and data_key["dtype_numpy"] == "<f4"

    stack = read_image_stream(run, "det-image")
    assert stack.images.dtype == np.float32 and stack.units == "m"
    assert list(stack.seq_num) == [1, 2, 3]
    np.testing.assert_array_equal(stack.images, live_images(recorded.live[uid]))
    np.testing.assert_allclose(run["assessment"]["p_good"].read(), [0.5, 0.6, 0.7])


def _by_stream(docs: Docs) -> dict[str, dict[int, dict[str, Any]]]:
    """stream -> seq_num -> event, for comparing events across uids."""
    streams = {doc["uid"]: doc["name"] for name, doc in docs if name == "descriptor"}
    out: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    for name, doc in docs:
        if name == "event":
            out[streams[doc["descriptor"]]][doc["seq_num"]] = doc
    return out


@pytest.mark.integration
def test_fed_documents_are_the_live_events(recorded: Recorded, tiled_client) -> None:
    uid = recorded.uids[0]
    got: Docs = []
    result = feed_documents(tiled_client[uid], lambda name, doc: got.append((name, doc)))
    live = recorded.live[uid]
    assert [n for n, _ in got if n != "event"] == ["start", "descriptor", "descriptor", "stop"]
    assert result.delivered["event"] == sum(1 for n, _ in live if n == "event") == 6
    assert dict(got[0][1]) == dict(live[0][1])  # the start document, unchanged
    assert got[-1][1]["uid"] == live[-1][1]["uid"]
    live_events, replayed = _by_stream(live), _by_stream(got)
    assert live_events.keys() == replayed.keys() == {"primary", "assessment"}
    for stream, events in live_events.items():
        assert events.keys() == replayed[stream].keys()
        for seq, event in events.items():
            again = replayed[stream][seq]
            assert again["time"] == pytest.approx(event["time"])
            assert again["timestamps"] == pytest.approx(event["timestamps"])
            for key, value in event["data"].items():
                want = np.asarray(value)
                np.testing.assert_array_equal(np.asarray(again["data"][key], want.dtype), want)


@pytest.mark.integration
def test_another_process_reads_the_runs_by_uid(recorded: Recorded, tmp_path: Path) -> None:
    # A plain tiled client, as on an analysis machine (bluesky-tiled-plugins installed).
    script = (
        "import json, os, numpy as np\n"
        "from tiled.client import from_uri\n"
        "c = from_uri(os.environ['SPM_TILED_URI'], api_key=os.environ['SPM_TILED_API_KEY'])\n"
        "for uid in json.loads(os.environ['SPM_UIDS']):\n"
        "    np.save(os.path.join(os.environ['SPM_OUT'], uid + '.npy'),\n"
        "            c[uid]['primary']['det-image'].read())\n"
        "    print(uid, c[uid].start['session_uid'])\n"
    )
    env = {
        **os.environ,
        "SPM_TILED_URI": recorded.server.uri,
        "SPM_TILED_API_KEY": recorded.server.api_key,  # in the environment, not in argv
        "SPM_UIDS": json.dumps(recorded.uids),
        "SPM_OUT": str(tmp_path),
    }
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    sessions = dict(line.split() for line in proc.stdout.splitlines())
    a, b = recorded.sessions
    assert [sessions[uid] for uid in recorded.uids] == [a, b, a]
    for uid in recorded.uids:
        images = np.load(tmp_path / f"{uid}.npy", allow_pickle=False)
        assert images.dtype == np.float32
        np.testing.assert_array_equal(images, live_images(recorded.live[uid]))


@pytest.mark.integration
def test_api_key_is_required(recorded: Recorded) -> None:
    server, uid = recorded.server, recorded.uids[0]
    urls = [
        f"{server.uri}/api/v1/metadata/",
        f"{server.uri}/api/v1/array/full/{uid}/primary/det-image",
    ]
    for url in urls:
        assert httpx.get(url, trust_env=False).status_code == 401
        bad = {"Authorization": "Apikey wrongkey0"}
        assert httpx.get(url, headers=bad, trust_env=False).status_code == 401
        good = {"Authorization": f"Apikey {server.api_key}"}
        assert httpx.get(url, headers=good, trust_env=False).status_code == 200
    with pytest.raises(Exception, match="401"):
        connect(server.uri, "wrongkey0")


@pytest.mark.integration
def test_server_listens_on_loopback_only(tiled_server: TiledServer) -> None:
    assert tiled_server.uri.startswith("http://127.0.0.1:")
    port = int(tiled_server.uri.rsplit(":", 1)[1])
    listening = [
        c.laddr
        for proc in [psutil.Process(tiled_server.pid), *psutil.Process(tiled_server.pid).children()]
        for c in proc.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    ]
    assert listening and {addr.ip for addr in listening} == {"127.0.0.1"}
    assert port in {addr.port for addr in listening}
    others = [
        a.address
        for addrs in psutil.net_if_addrs().values()
        for a in addrs
        if a.family == socket.AF_INET and not a.address.startswith("127.")
    ]
    for address in others:  # the same port on this machine's other addresses is closed
        with pytest.raises(OSError), socket.create_connection((address, port), timeout=2):
            pass


# --- crash safety and write failures -----------------------------------------------------------

CRASHING_RUN = """
import os
import bluesky.plans as bp
from bluesky import RunEngine
from ophyd_async.core import init_devices
from spm_bluesky.storage import connect, subscribe_writer
from spm_bluesky.devices.sim_detector import SoftImageDetector

RE = RunEngine({})
with init_devices():
    det = SoftImageDetector(pixels=32)
subscribe_writer(RE, connect(os.environ["SPM_TILED_URI"], os.environ["SPM_TILED_API_KEY"]))
RE.subscribe(lambda name, doc: print(name, doc.get("uid") if name == "start"
                                     else doc.get("seq_num", ""), flush=True))
RE(bp.count([det], num=10_000, delay=0.05))
"""


@pytest.mark.integration
def test_a_crash_mid_run_keeps_the_events_written_so_far(
    tiled_server: TiledServer, tiled_client
) -> None:
    env = {
        **os.environ,
        "SPM_TILED_URI": tiled_server.uri,
        "SPM_TILED_API_KEY": tiled_server.api_key,
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASHING_RUN],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    timer = threading.Timer(90, proc.kill)  # never hang the suite
    timer.start()
    uid, events = None, 0
    try:
        for line in proc.stdout:
            name, _, value = line.strip().partition(" ")
            uid = value if name == "start" else uid
            events += name == "event"
            if events == 3:
                proc.send_signal(signal.SIGKILL)  # no stop document, no cleanup
                break
    finally:
        proc.kill()
        proc.wait()
        timer.cancel()
    assert uid is not None and events == 3
    run = tiled_client[uid]
    assert "stop" not in run.metadata
    assert run["primary"]["det-image"].shape[0] >= 3
    assert list(read_image_stream(run, "det-image").seq_num[:3]) == [1, 2, 3]


@pytest.mark.integration
@pytest.mark.filterwarnings("ignore:The callback .* raised ClientError")  # event-model's guess
def test_backup_directory_keeps_a_run_tiled_refused(
    recorded: Recorded, tiled_client, tmp_path: Path
) -> None:
    uid = recorded.uids[1]
    docs = recorded.live[uid]
    with pytest.raises(Exception, match="409"):  # the run exists: Tiled refuses it again
        plain = make_writer(tiled_client)
        for name, doc in docs:
            plain(name, doc)
    backed_up = make_writer(tiled_client, backup_directory=tmp_path)
    for name, doc in docs:
        backed_up(name, doc)  # no exception: a plan would go on
    saved = list(dedupe_events(load_backup(tmp_path / f"{uid}.jsonl")))
    assert [n for n, _ in saved] == [n for n, _ in docs]
    images = np.stack(
        [d["data"]["det-image"] for n, d in saved if "det-image" in d.get("data", {})]
    )
    np.testing.assert_array_equal(images.astype(np.float32), live_images(docs))


# --- a suspender retakes points: duplicated seq_num -------------------------------------------


class BeamDumpDetector(SoftImageDetector):
    """Drops the 'beam' during its 3rd trigger, once; images hold the trigger count."""

    def __init__(self, beam: Signal, **kwargs: Any) -> None:
        self.beam = beam
        self.count = 0
        super().__init__(**kwargs)

    @AsyncStatus.wrap
    async def trigger(self) -> None:
        self.count += 1
        self._set_image(np.full((8, 8), self.count, np.float32))
        if self.count == 3:
            self.beam.put(0)
            threading.Timer(0.3, self.beam.put, (1,)).start()


@pytest.mark.integration
def test_suspender_retakes_are_deduplicated(tiled_client) -> None:
    RE = RunEngine({})
    beam = Signal(name="beam", value=1)
    RE.install_suspender(SuspendBoolLow(beam, sleep=0.1))
    with init_devices():
        det = BeamDumpDetector(beam, pixels=8)
    live: Docs = []
    RE.subscribe(lambda name, doc: live.append((name, doc)))
    subscribe_writer(RE, tiled_client)

    @bpp.run_decorator()
    def plan() -> Iterator[Any]:
        yield from bps.checkpoint()
        for _ in range(4):
            yield from bps.trigger_and_read([det])

    (uid,) = RE(plan())
    seq = [doc["seq_num"] for name, doc in live if name == "event"]
    assert seq == [1, 2, 1, 2, 3, 4]  # the rewind took points 1 and 2 again
    expected = [
        float(doc["data"]["det-image"][0, 0])
        for name, doc in dedupe_events(live)
        if name == "event"
    ]
    assert expected == [4.0, 5.0, 6.0, 7.0]  # the last take of each point

    run = tiled_client[uid]
    stack = read_image_stream(run, "det-image")
    assert list(stack.seq_num) == [1, 2, 3, 4]
    assert list(stack.images[:, 0, 0]) == expected
    got: Docs = []
    result = feed_documents(run, lambda name, doc: got.append((name, doc)))
    assert [d["seq_num"] for n, d in got if n == "event"] == [1, 2, 3, 4]
    assert [d["data"]["det-image"][0][0] for n, d in got if n == "event"] == expected
    assert result.frames_repaired > 0  # run.documents() alone pairs these frames wrongly


# --- facility mode --------------------------------------------------------------------------


@pytest.mark.integration
def test_postgresql_catalog_end_to_end(
    postgres_uri: str, tmp_path: Path, RE: RunEngine, detector
) -> None:
    with start_server(TiledConfig(tmp_path, catalog_uri=postgres_uri)) as server:
        client = server.client()
        subscribe_writer(RE, client)
        live: Docs = []
        RE.subscribe(lambda name, doc: live.append((name, doc)))
        session = str(uuid.uuid4())
        (uid,) = RE(bp.count([detector], num=2), session_uid=session)
        assert client[-1].start["uid"] == uid
        assert [r.start["uid"] for r in runs_by_session(client, session).values()] == [uid]
        stack = read_image_stream(client[uid], "det-image")
        np.testing.assert_array_equal(stack.images, live_images(live))
        got: Docs = []
        feed_documents(client[uid], lambda name, doc: got.append((name, doc)))
        assert [n for n, _ in got] == ["start", "descriptor", "event", "event", "stop"]
    assert not (tmp_path / "catalog.db").exists() and not (tmp_path / "tables.sqlite").exists()
    database = postgres_uri.rsplit("/", 1)[1]
    n_nodes = asyncio.run(_count_nodes(database))
    assert n_nodes >= 3  # the run and its stream nodes live in PostgreSQL


async def _count_nodes(database: str) -> int:
    import asyncpg

    conn = await asyncpg.connect(host="127.0.0.1", port=5432, user="postgres", database=database)
    try:
        return await conn.fetchval("SELECT count(*) FROM nodes")
    finally:
        await conn.close()
