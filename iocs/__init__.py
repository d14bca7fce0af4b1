"""caproto soft IOCs that serve the digital twin over Channel Access."""
