"""``python -m spm_bluesky.ioc``: the same as the ``spm-ioc`` command."""

from spm_bluesky.ioc.stm_ioc import main

main()
