# ruff: noqa: F821
# (Startup files run in one namespace: later files use names from earlier ones.)
"""Say what the session holds (IPython only)."""

from spm_bluesky import schema

if INTERACTIVE:
    _stm = f"STM at {settings.prefix}" if stm is not None else "NOT CONNECTED"
    _c = (f"Tiled catalog at {settings.tiled_uri}; TiledWriter subscribed" if c is not None
          else "NO TILED: runs are not saved")
    print(
        "spm-bluesky session ready:\n"
        f"  RE      RunEngine; RE.md persists in {settings.metadata_dir}\n"
        f"  stm     {_stm}\n"
        f"  c       {_c}\n"
        "  plans   acquire_image, survey, tip_action, approach, withdraw, move_area,"
        " autonomous_session (bp, bps: bluesky's plans and stubs)\n"
        "  live    bec (BestEffortCallback), live_image (latest image)\n"
        f"  try     RE(survey(stm, 3)); run = c[-1]; run['{schema.PRIMARY}']"
        f"['{schema.SCAN_IMAGE}'][:]"
    )
    del _stm, _c
