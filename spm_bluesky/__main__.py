"""``python -m spm_bluesky``: the same as the ``spm-bluesky`` command."""

from spm_bluesky.commandline.main import main

raise SystemExit(main())
