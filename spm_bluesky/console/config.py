"""How a console is set up: where Tiled is, the key that guards both, where it listens."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: The console's default address: loopback only, like every service of the project.
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class ConsoleConfig:
    """One console: the Tiled server it reads, the API key (Tiled's, and the console's own
    guard), the data directory of ``spm-bluesky up`` (None: no session control), and the
    address it binds (port 0: a free one)."""

    tiled_uri: str
    api_key: str
    data_dir: Path | None
    host: str = LOOPBACK
    port: int = 0

    def __post_init__(self) -> None:
        if not self.api_key:
            raise ValueError("the console needs an API key: it serves nothing without one")
        if not self.tiled_uri:
            raise ValueError("the console needs the URI of a Tiled server")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port} is not 0 to 65535")

    def __repr__(self) -> str:  # never print the key
        return (f"ConsoleConfig(tiled_uri={self.tiled_uri!r}, api_key='***', "
                f"data_dir={self.data_dir!r}, host={self.host!r}, port={self.port})")

    @property
    def loopback_only(self) -> bool:
        """True if the console can be reached from this machine only."""
        return self.host in (LOOPBACK, "localhost", "::1")
