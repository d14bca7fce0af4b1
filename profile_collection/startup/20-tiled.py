# ruff: noqa: F821
# (Startup files run in one namespace: later files use names from earlier ones.)
"""The Tiled catalog ``c`` and a TiledWriter: every run goes to Tiled as it is taken."""

from spm_bluesky.services.profile import connect_tiled
from spm_bluesky.storage import subscribe_writer

try:
    c = connect_tiled(settings)
except ServiceMissing as err:
    if not INTERACTIVE:
        raise
    print(f"WARNING: runs are NOT saved: {err}")
    c = None
else:
    subscribe_writer(RE, c, backup_directory=settings.backup_dir)
