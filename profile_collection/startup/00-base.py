# ruff: noqa: F401
# (Startup files run in one namespace: later files use names from earlier ones.)
"""Session settings: where the IOC and Tiled are, before any Channel Access client starts.

Read from the state file of `spm-bluesky up` (``$SPM_BLUESKY_HOME/services.json``, default
``./spm-data``) or from ``SPM_*``/``EPICS_CA_*`` variables; see docs/reference/profile.md.
These files run in IPython and in the queueserver's worker alike: IPython-only parts check
INTERACTIVE.
"""

from spm_bluesky.services.profile import ServiceMissing, SessionSettings, interactive

settings = SessionSettings.resolve()
settings.apply_epics_env()  # EPICS CA reads its environment once per process
INTERACTIVE = interactive()
print(f"spm-bluesky: {settings.describe()}")
