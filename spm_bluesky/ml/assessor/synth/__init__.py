"""Synthetic training frames beyond the twin: surface families, real-looking tip defects and
instrument noise (numpy, seeded). See :mod:`.generate` for the frames and their labels."""
