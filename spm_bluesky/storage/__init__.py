"""Tiled storage: the embedded server, the document writers, and reading stored runs back."""
