"""Evaluating the whole system on the twin: the session comparison (full, random, heuristic,
oracle), the one-command demo, and the twin gallery."""
