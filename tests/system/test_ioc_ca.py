"""The STM IOC over real Channel Access: caproto's threading client and aioca (libca).

Every IOC here is the real ``spm_bluesky.ioc`` subprocess on loopback (tests/fixtures_ioc.py).
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aioca import FORMAT_CTRL, CANothing, _catools, caget, camonitor, caput
from caproto import ChannelType
from caproto.threading.client import Context
from epicscorelibs.ca.cadef import CAException

from spm_bluesky.ioc.pvtable import pv_rows
from spm_bluesky.ioc.stm_ioc import SimStmIOC, pv_table
from spm_bluesky.ioc.twin_backend import TwinBackend
from tests.fixtures_ioc import IocProcess

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]

#: The PV contract (docs/reference/pv-table.md), plus the simulation PVs other parts rely on.
CONTRACT_PVS = (
    "Scan:CenterX", "Scan:CenterY", "Scan:Size", "Scan:Pixels", "Scan:Speed", "Scan:Bias",
    "Scan:Setpoint", "Scan:Acquire", "Scan:Abort", "Scan:Image", "Scan:FrameCounter",
    "Tip:ActionX", "Tip:ActionY", "Tip:PulseBias", "Tip:PulseTime", "Tip:DipDepth",
    "Tip:Pulse", "Tip:Dip", "Tip:ActionCounter", "Coarse:Approach", "Coarse:Withdraw",
    "Coarse:MoveArea", "Coarse:AreaIndex", "Status:Contact", "Status:Crashed",
    "Status:CrashCount", "Status:Range", "Status:Z", "Status:ZRange", "Status:Clock",
    "Sim:TipState", "Sim:TimeScale", "Sim:Fault", "Sim:Degrade", "Sim:Seed", "Sim:DamageArea",
)
COMMANDS = ("Scan:Acquire", "Scan:Abort", "Tip:Pulse", "Tip:Dip", "Coarse:Approach",
            "Coarse:Withdraw", "Coarse:MoveArea", "Sim:Degrade")
ROWS = pv_rows(SimStmIOC("", TwinBackend(0)))
SUFFIXES = [row.name for row in ROWS]
LIMITED_WRITABLE = [row.name for row in ROWS if row.access == "rw" and row.limits]


# -- helpers --------------------------------------------------------------------------


@pytest.fixture
def aio() -> Iterator[Callable[[Awaitable[Any]], Any]]:
    """Run coroutines on one event loop per test; close its CA channels afterwards.

    Request it after ``start_ioc`` so that the channels close before the IOC stops.
    """
    with asyncio.Runner() as runner:
        yield runner.run
        runner.run(_close_this_loops_channels())


async def _close_this_loops_channels() -> None:
    # aioca only offers purging every loop's channels; close just ours so that channels to
    # stopped IOCs do not keep searching (and calling into a closed loop) for the session.
    cache = _catools._Context._channel_caches.pop(asyncio.get_running_loop(), None)
    if cache is not None:
        cache.purge()


@pytest.fixture(scope="module")
def ca_context() -> Iterator[Context]:
    """A caproto threading-client context for the module."""
    context = Context()
    yield context
    context.disconnect()


async def acquire(ioc: IocProcess, timeout: float = 10.0) -> np.ndarray:
    """Acquire one frame over aioca the way a client should: put, await the counter, read."""
    expected = await caget(ioc.pv("Scan:FrameCounter")) + 1
    reached = asyncio.Event()
    sub = camonitor(ioc.pv("Scan:FrameCounter"),
                    lambda count: reached.set() if count >= expected else None)
    try:
        await caput(ioc.pv("Scan:Acquire"), 1, wait=True, timeout=timeout)
        await asyncio.wait_for(reached.wait(), timeout)
    finally:
        sub.close()
    return await caget(ioc.pv("Scan:Image"))


async def put_many(ioc: IocProcess, **values: Any) -> None:
    """caput(wait=True) each ``Group_Name=value`` (``Scan_Size`` for ``Scan:Size``) in order."""
    for name, value in values.items():
        await caput(ioc.pv(name.replace("_", ":")), value, wait=True)


async def get_many(ioc: IocProcess, *names: str) -> dict[str, Any]:
    values = await caget([ioc.pv(name) for name in names])
    return dict(zip(names, values, strict=True))


# -- the PV table ---------------------------------------------------------------------


def test_list_pvs_lists_every_contract_pv() -> None:
    listed = subprocess.run([sys.executable, "-m", "spm_bluesky.ioc", "--list-pvs"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=60, check=True).stdout
    names = re.findall(r"^\| `STM:([^`]+)`", listed, flags=re.MULTILINE)
    assert set(CONTRACT_PVS) <= set(names)
    assert names == SUFFIXES
    assert all(row.meaning for row in ROWS), "every PV needs a description"


def test_docs_table_matches_list_pvs() -> None:
    reference = (REPO_ROOT / "docs" / "reference" / "pv-table.md").read_text()
    assert pv_table() in reference, (
        "regenerate the table in docs/reference/pv-table.md: spm-ioc --list-pvs")


# -- reading --------------------------------------------------------------------------


def test_every_pv_reads_with_caproto_client(ioc: IocProcess, ca_context: Context) -> None:
    pvs = ca_context.get_pvs(*(ioc.pv(name) for name in SUFFIXES), timeout=10)
    for pv in pvs:
        pv.wait_for_connection(timeout=10)
    values = {name: pv.read(timeout=5).data for name, pv in zip(SUFFIXES, pvs, strict=True)}
    assert values["Scan:Image"].dtype.kind == "f" and values["Scan:Image"].dtype.itemsize == 4
    assert values["Scan:Size"][0] == pytest.approx(10e-9)
    assert values["Status:ZRange"][0] > 0 and values["Status:Range"][0] > 0
    assert values["Scan:FrameTime"][0] > 0
    assert pvs[SUFFIXES.index("Sim:TipState")].read(
        data_type=ChannelType.STRING).data[0] == b"good"


def test_every_pv_reads_with_aioca(ioc: IocProcess, aio) -> None:
    values = aio(get_many(ioc, *SUFFIXES))
    assert values["Scan:Image"].dtype == np.float32
    assert values["Status:Contact"] == 1
    assert values["Sim:Seed"] == 0
    assert values["Sim:TimeScale"] == 0.0
    assert all(values[name] == 0 for name in COMMANDS), "idle commands read back 0"
    ctrl = aio(caget(ioc.pv("Scan:Size"), format=FORMAT_CTRL))
    assert (ctrl.lower_ctrl_limit, ctrl.upper_ctrl_limit, ctrl.units) == (1e-9, 200e-9, "m")


# -- frames ---------------------------------------------------------------------------


def test_frame_over_aioca(start_ioc, aio) -> None:
    ioc = start_ioc()
    aio(put_many(ioc, Scan_Pixels=48, Scan_Size=20e-9))
    before = aio(get_many(ioc, "Scan:FrameCounter", "Status:Clock", "Scan:FrameTime"))
    image = aio(acquire(ioc))
    after = aio(get_many(ioc, "Scan:FrameCounter", "Status:Clock", "Scan:Acquire"))
    assert image.dtype == np.float32 and image.shape == (48 * 48,)
    heights = image.reshape(48, 48)
    assert np.isfinite(heights).all() and 0 < np.ptp(heights) < 10e-9
    assert after["Scan:FrameCounter"] == before["Scan:FrameCounter"] + 1
    assert after["Status:Clock"] == pytest.approx(before["Status:Clock"] + before["Scan:FrameTime"])
    assert after["Scan:Acquire"] == 0


def test_frame_over_caproto_client(ioc: IocProcess, ca_context: Context) -> None:
    acquire_pv, counter, pixels, image_pv = ca_context.get_pvs(
        *(ioc.pv(name) for name in ("Scan:Acquire", "Scan:FrameCounter", "Scan:Pixels",
                                    "Scan:Image")), timeout=10)
    start = counter.read(timeout=5).data[0]
    response = acquire_pv.write([1], wait=True, timeout=10)
    assert response.status.success
    deadline = time.monotonic() + 5
    while counter.read(timeout=5).data[0] < start + 1:
        assert time.monotonic() < deadline, "FrameCounter did not increment"
        time.sleep(0.01)
    n = pixels.read(timeout=5).data[0]
    image = image_pv.read(timeout=5).data
    assert image.dtype.kind == "f" and image.dtype.itemsize == 4
    assert image.reshape(n, n).shape == (n, n)


# -- commands -------------------------------------------------------------------------


def test_every_command_completes_and_acts(start_ioc, aio) -> None:
    ioc = start_ioc(seed=3)

    async def scenario() -> None:
        state = await get_many(ioc, "Tip:ActionCounter", "Coarse:AreaIndex", "Status:Clock")
        await put_many(ioc, Tip_ActionX=50e-9, Tip_ActionY=-40e-9, Tip_PulseBias=-4.0,
                       Tip_Pulse=1)
        assert await caget(ioc.pv("Tip:ActionCounter")) == state["Tip:ActionCounter"] + 1
        await put_many(ioc, Tip_DipDepth=0.8e-9, Tip_Dip=1)
        assert await caget(ioc.pv("Tip:ActionCounter")) == state["Tip:ActionCounter"] + 2
        assert await caget(ioc.pv("Sim:DamageArea")) > 0

        await put_many(ioc, Coarse_Withdraw=1)
        assert await caget(ioc.pv("Status:Contact")) == 0
        with pytest.raises(CANothing):  # a pulse needs tunnelling contact: the put fails
            await put_many(ioc, Tip_Pulse=1)
        clock = await caget(ioc.pv("Status:Clock"))
        await put_many(ioc, Coarse_Approach=1)
        assert await caget(ioc.pv("Status:Contact")) == 1
        assert await caget(ioc.pv("Status:Clock")) >= clock + 120  # approach and settling

        await put_many(ioc, Coarse_MoveArea=1)
        moved = await get_many(ioc, "Coarse:AreaIndex", "Status:Contact")
        assert moved == {"Coarse:AreaIndex": state["Coarse:AreaIndex"] + 1, "Status:Contact": 1}

        await put_many(ioc, Sim_Degrade=1)
        assert await caget(ioc.pv("Sim:TipState"), datatype=str) != "good"

        await acquire(ioc)
        await put_many(ioc, Scan_Abort=1)  # nothing running: completes at once
        after = await get_many(ioc, *COMMANDS, "Status:Busy")
        assert all(value == 0 for value in after.values()), after

    aio(scenario())


def _out_of_range(row) -> list[Any]:
    if row.type == "enum":
        return [len(row.limits.split(", ")), 99]
    low, high = (float(text) for text in row.limits.split(" to "))
    if row.type == "int":
        return [int(low) - 1, int(high) + 1]
    return [low - 1.0, high + 1.0, high + abs(high) * 0.01]


def test_out_of_range_puts_are_refused(start_ioc, aio, ca_context: Context) -> None:
    """For each limited writable PV, both clients: put refused, value unchanged, IOC serves."""
    ioc = start_ioc()
    rows = [row for row in ROWS if row.name in LIMITED_WRITABLE]
    assert len(rows) >= 20
    pvs = dict(zip(LIMITED_WRITABLE, ca_context.get_pvs(*map(ioc.pv, LIMITED_WRITABLE),
                                                         timeout=10), strict=True))
    problems = []

    async def check(row) -> None:
        before = await caget(ioc.pv(row.name))
        for value in _out_of_range(row):
            try:
                await caput(ioc.pv(row.name), value, wait=True, timeout=5)
                problems.append(f"aioca: {row.name}={value!r} accepted")
            except CANothing as error:
                if "write request failed" not in str(error):
                    problems.append(f"aioca: {row.name}={value!r}: {error}")
            response = pvs[row.name].write([value], wait=True, timeout=5)
            if response.status.success:
                problems.append(f"caproto: {row.name}={value!r} accepted")
            if (after := await caget(ioc.pv(row.name))) != before:
                problems.append(f"{row.name} changed from {before!r} to {after!r}")
        assert await caget(ioc.pv("Status:Contact")) == 1  # still serving

    for row in rows:
        aio(check(row))
    assert not problems, "\n".join(problems)
    assert aio(acquire(ioc)).size == 64 * 64


def test_rules_between_pvs_are_enforced(start_ioc, aio) -> None:
    ioc = start_ioc()

    async def scenario() -> None:
        half = 0.95 * 850e-9 / 2
        for name, value in (("Scan:Bias", 0.005), ("Scan:Bias", -0.01),
                            ("Scan:CenterX", half - 1e-9),  # 10 nm frame would stick out
                            ("Scan:CenterY", -half)):
            with pytest.raises(CANothing):
                await caput(ioc.pv(name), value, wait=True)
        await put_many(ioc, Scan_Size=200e-9)
        with pytest.raises(CANothing):
            await put_many(ioc, Scan_CenterX=half - 50e-9)
        await put_many(ioc, Scan_Size=10e-9, Scan_CenterX=half - 5e-9, Scan_Bias=-0.019)
        with pytest.raises(CANothing):
            await put_many(ioc, Scan_Size=20e-9)
        assert await get_many(ioc, "Scan:Size", "Scan:CenterX", "Scan:Bias") == {
            "Scan:Size": 10e-9, "Scan:CenterX": half - 5e-9, "Scan:Bias": -0.019}
        with pytest.raises(CAException, match="Write access denied"):  # read-only
            await caput(ioc.pv("Scan:FrameCounter"), 5, wait=True)
        assert (await acquire(ioc)).size == 64 * 64

    aio(scenario())


# -- faults and pacing ----------------------------------------------------------------


def test_faults_lose_contact_and_crash(start_ioc, aio) -> None:
    ioc = start_ioc()

    async def scenario() -> None:
        await put_many(ioc, Sim_Fault="lose_contact")
        assert await caget(ioc.pv("Status:Contact")) == 0
        with pytest.raises(CANothing):
            await put_many(ioc, Tip_Dip=1)
        await put_many(ioc, Coarse_Approach=1)
        assert await caget(ioc.pv("Status:Contact")) == 1
        await put_many(ioc, Sim_Fault="crash")
        assert await get_many(ioc, "Status:Crashed", "Status:CrashCount", "Status:Contact") == {
            "Status:Crashed": 1, "Status:CrashCount": 1, "Status:Contact": 0}
        await put_many(ioc, Sim_Fault="none", Coarse_Approach=1)
        assert await get_many(ioc, "Status:Crashed", "Status:Contact") == {
            "Status:Crashed": 0, "Status:Contact": 1}

    aio(scenario())


def test_stall_hangs_commands_until_abort_or_cleared(start_ioc, aio) -> None:
    ioc = start_ioc()

    async def scenario() -> None:
        await put_many(ioc, Sim_Fault="stall")
        stuck = asyncio.ensure_future(caput(ioc.pv("Scan:Acquire"), 1, wait=True, timeout=30))
        await asyncio.sleep(1.0)
        assert not stuck.done()
        assert await caget(ioc.pv("Status:Busy")) == 1
        await put_many(ioc, Scan_Abort=1)
        with pytest.raises(CANothing):
            await asyncio.wait_for(stuck, 5)
        assert await get_many(ioc, "Scan:FrameCounter", "Status:Busy") == {
            "Scan:FrameCounter": 0, "Status:Busy": 0}

        stuck = asyncio.ensure_future(acquire(ioc, timeout=30))
        await asyncio.sleep(0.5)
        assert not stuck.done()
        await put_many(ioc, Sim_Fault="none")  # clearing the stall lets the command finish
        assert (await asyncio.wait_for(stuck, 10)).size == 64 * 64
        assert await caget(ioc.pv("Scan:FrameCounter")) == 1

    aio(scenario())


def test_time_scale_paces_and_abort_interrupts(start_ioc, aio) -> None:
    ioc = start_ioc(time_scale=1.0)

    async def scenario() -> None:
        # 16 lines x 2 x 10 nm / 640 nm/s = 0.5 s of instrument time per frame
        await put_many(ioc, Scan_Pixels=16, Scan_Speed=640e-9)
        assert await caget(ioc.pv("Scan:FrameTime")) == pytest.approx(0.5)
        start = time.monotonic()
        await acquire(ioc)
        assert 0.45 < time.monotonic() - start < 3.0

        await put_many(ioc, Scan_Speed=10e-9)  # a 32 s frame
        scan = asyncio.ensure_future(caput(ioc.pv("Scan:Acquire"), 1, wait=True, timeout=60))
        await asyncio.sleep(0.3)
        start = time.monotonic()
        await put_many(ioc, Scan_Abort=1)
        with pytest.raises(CANothing):
            await asyncio.wait_for(scan, 5)
        assert time.monotonic() - start < 2.0
        assert await caget(ioc.pv("Scan:FrameCounter")) == 1

        await put_many(ioc, Sim_TimeScale=0.0)
        start = time.monotonic()
        await acquire(ioc)
        assert time.monotonic() - start < 2.0

    aio(scenario())
