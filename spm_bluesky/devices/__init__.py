"""ophyd-async devices over the STM's PV contract (Channel Access), and an in-process
stand-in detector for tests without an IOC."""

from spm_bluesky.devices.stm import STM, Command, PutRefused, ScanDetector

__all__ = ["STM", "Command", "PutRefused", "ScanDetector"]
