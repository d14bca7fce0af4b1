"""The background services a session needs (the IOC and the embedded Tiled server), the
loopback Channel Access settings, and what the IPython profile builds on."""
