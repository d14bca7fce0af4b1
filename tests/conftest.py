"""Test-session setup: private loopback Channel Access, headless plotting, shared fixtures."""

from __future__ import annotations

import os

import pytest
from bluesky import RunEngine

from spm_bluesky.services.epics_env import use_private_loopback_ca

# Must happen before any CA client library (aioca/libca, caproto) starts in this process.
CA_ENV = use_private_loopback_ca()
os.environ.setdefault("MPLBACKEND", "Agg")

pytest_plugins = ["tests.fixtures_ioc", "tests.fixtures_tiled"]


@pytest.fixture
def RE():
    """A real RunEngine that returns run results; halted if a test leaves it busy."""
    engine = RunEngine(call_returns_result=True)
    yield engine
    if engine.state != "idle":
        engine.halt()


@pytest.fixture
def docs(RE):
    """Every (name, document) pair the RunEngine emits during the test."""
    collected: list[tuple[str, dict]] = []
    RE.subscribe(lambda name, doc: collected.append((name, doc)))
    return collected
