# ruff: noqa: F821
# (Startup files run in one namespace: later files use names from earlier ones.)
"""The RunEngine, with metadata that persists across restarts, BestEffortCallback and a live
image display; progress bars in IPython."""

from bluesky import RunEngine
from bluesky.callbacks.best_effort import BestEffortCallback
from bluesky.utils import PersistentDict, ProgressBarManager

from spm_bluesky import schema
from spm_bluesky.services.profile import LatestImage

RE = RunEngine()
# One process at a time per directory (zict): see docs/reference/profile.md.
RE.md = PersistentDict(str(settings.metadata_dir))

bec = BestEffortCallback()
bec.noplot_streams.append(schema.TRUTH)  # the twin's true tip class: a label, not a curve
# Verdicts and conditioning steps are words and counters, not curves (a figure each would
# only slow the session); the assessment's p(good) is plotted.
bec.noplot_streams.extend([schema.DECISION, schema.ACTION])
RE.subscribe(bec)
if INTERACTIVE:
    import matplotlib
    import matplotlib.pyplot as plt

    if "qt" in matplotlib.get_backend().lower():
        from bluesky.callbacks.mpl_plotting import initialize_qt_teleporter

        initialize_qt_teleporter()
    plt.ion()
    live_image = LatestImage()
    RE.subscribe(live_image)
    RE.waiting_hook = ProgressBarManager()
else:
    bec.disable_plots()  # the queueserver's worker has no display
