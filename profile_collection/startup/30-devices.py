# ruff: noqa: F821
# (Startup files run in one namespace: later files use names from earlier ones.)
"""The microscope ``stm``, connected over Channel Access."""

from spm_bluesky.services.profile import connect_stm

try:
    stm = connect_stm(settings)
except ServiceMissing as err:
    if not INTERACTIVE:
        raise
    print(f"WARNING: no microscope: {err}")
    stm = None
