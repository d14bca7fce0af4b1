"""spm-bluesky: an autonomous scanning tunnelling microscope on the Bluesky stack."""

__version__ = "0.1.0"
