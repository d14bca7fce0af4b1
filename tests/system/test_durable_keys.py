"""No API key in the Tiled server's log: a request that carries the key as ``?api_key=``
is logged with the key scrubbed."""

from __future__ import annotations

import time

import httpx
import pytest

from spm_bluesky.storage import TiledConfig, start_server
from spm_bluesky.storage.server import REDACTED

pytestmark = pytest.mark.integration


def test_api_key_in_a_url_is_scrubbed_from_the_server_log(tmp_path):
    with start_server(TiledConfig(tmp_path / "tiled")) as server:
        response = httpx.get(f"{server.uri}/api/v1/metadata/",
                             params={"api_key": server.api_key}, trust_env=False)
        assert response.status_code == 200  # the key in the URL was accepted
        refused = httpx.get(f"{server.uri}/api/v1/metadata/",
                            params={"api_key": "0" * 64}, trust_env=False)
        assert refused.status_code == 401
        deadline = time.monotonic() + 10
        while server.log_tail(1_000_000).count("api_key=") < 2:
            assert time.monotonic() < deadline, server.log_tail()
            time.sleep(0.1)
        log = server.log_path.read_text()
    assert server.api_key not in log
    assert "0" * 64 not in log
    assert f"api_key={REDACTED}" in log
