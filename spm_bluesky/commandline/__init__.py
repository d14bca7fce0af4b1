"""The ``spm-bluesky`` command line."""
