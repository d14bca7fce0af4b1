"""The caproto soft IOC that serves the PV contract over the digital twin."""
