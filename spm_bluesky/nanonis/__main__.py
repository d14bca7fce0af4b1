"""``python -m spm_bluesky.nanonis``: the Nanonis simulator (same as ``spm-nanonis-sim``)."""

from spm_bluesky.nanonis.simulator import main

main()
