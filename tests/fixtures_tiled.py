"""Tiled fixtures: a real embedded Tiled server (subprocess), clients, a fresh PostgreSQL DB."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Iterator

import pytest

from spm_bluesky.storage import TiledConfig, TiledServer, connect, start_server

POSTGRES_HOST, POSTGRES_PORT, POSTGRES_USER = "127.0.0.1", 5432, "postgres"


def postgres_listening() -> bool:
    """True if something accepts TCP connections on the project's PostgreSQL address."""
    try:
        socket.create_connection((POSTGRES_HOST, POSTGRES_PORT), timeout=1).close()
    except OSError:
        return False
    return True


async def _admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(
        host=POSTGRES_HOST, port=POSTGRES_PORT, user=POSTGRES_USER, database="postgres"
    )
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def tiled_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TiledServer]:
    """One embedded Tiled server (SQLite, API key, loopback) for the test session."""
    server = start_server(TiledConfig(tmp_path_factory.mktemp("tiled")))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def tiled_client(tiled_server: TiledServer):
    """A fresh authenticated client of the session's Tiled server."""
    return connect(tiled_server.uri, tiled_server.api_key)


@pytest.fixture
def postgres_uri() -> Iterator[str]:
    """A fresh PostgreSQL database at 127.0.0.1:5432 (trust auth), dropped afterwards."""
    if not postgres_listening():
        pytest.skip(f"no PostgreSQL listening on {POSTGRES_HOST}:{POSTGRES_PORT}")
    name = f"spm_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql://{POSTGRES_USER}@{POSTGRES_HOST}:{POSTGRES_PORT}/{name}"
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
