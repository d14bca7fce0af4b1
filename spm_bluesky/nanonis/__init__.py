"""The Nanonis TCP programming interface: its codec, the mapped commands, an asyncio client
and a controller simulator over the digital twin.

:mod:`~spm_bluesky.nanonis.protocol` frames messages, :mod:`~spm_bluesky.nanonis.commands`
lists the commands this project uses with their layouts, :mod:`~spm_bluesky.nanonis.client`
speaks to a controller, and :mod:`~spm_bluesky.nanonis.simulator` is one.
"""
