"""Test-session setup: private loopback Channel Access, headless plotting, shared fixtures."""

from __future__ import annotations

import os

from spm_bluesky.epics_env import use_private_loopback_ca

# Must happen before any CA client library (aioca/libca, caproto) starts in this process.
CA_ENV = use_private_loopback_ca()
os.environ.setdefault("MPLBACKEND", "Agg")

pytest_plugins = ["tests.fixtures_ioc", "tests.fixtures_tiled"]
