"""A client of the simulator's truth channel (JSON lines; no part of the Nanonis protocol).

The truth channel reports the twin's true state (the tip class, the simulated clock, the
damage) and takes the twin-only controls (faults, tip degradation, pacing); see
:meth:`spm_bluesky.nanonis.simulator.Simulator.serve_truth`. One request at a time over one
connection; a timeout or a broken connection closes it and raises :class:`ConnectionError`
(the next request connects again), a refused request raises :class:`ValueError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

#: Seconds one request may take.
DEFAULT_TIMEOUT = 30.0


class TruthClient:
    """Requests to a simulator's truth channel at ``host:port``."""

    def __init__(self, host: str, port: int, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()

    async def request(self, op: str = "state", **args: Any) -> dict[str, Any]:
        """Send ``{"op": op, **args}``; return the answer (the twin's state after it)."""
        line = json.dumps({"op": op, **args}).encode() + b"\n"
        async with self._lock:
            try:
                async with asyncio.timeout(self.timeout):
                    if self._writer is None or self._writer.is_closing():
                        self._reader, self._writer = await asyncio.open_connection(
                            self.host, self.port)
                    assert self._reader is not None
                    self._writer.write(line)
                    await self._writer.drain()
                    reply = await self._reader.readline()
                if not reply:
                    raise ConnectionError("the truth channel closed")
            except (OSError, asyncio.IncompleteReadError) as error:
                await self.close()
                raise ConnectionError(f"truth channel {self.host}:{self.port}: "
                                      f"{error!r}") from error
            except asyncio.CancelledError:
                writer, self._reader, self._writer = self._writer, None, None
                if writer is not None:  # a reply may still come: do not reuse the stream
                    writer.close()
                raise
        answer: dict[str, Any] = json.loads(reply)
        if not answer.get("ok", False):
            raise ValueError(f"truth channel refused {op!r}: {answer.get('error')}")
        return answer

    async def close(self) -> None:
        """Close the connection."""
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
