"""What the RunEngine session (``profile_collection/startup``) builds on.

Where the services are (the state file of ``spm-bluesky up``, or environment variables),
connecting the STM and the Tiled catalog with messages that say what to do when one is
missing, and a live display of the newest image, which BestEffortCallback does not give for
2-D data. The same startup files run in IPython and in the queueserver's worker.

Environment variables (each overrides the state file):

============================  ============================================================
``SPM_BLUESKY_HOME``          data directory (default ``./spm-data``): state file, metadata
``SPM_METADATA_DIR``          where ``RE.md`` persists (default ``<data dir>/re_md``)
``SPM_STM_PREFIX``            PV prefix of the STM (default ``STM:``)
``SPM_STM_SIM``               ``1``: the IOC is the twin (``stm.sim``); ``0``: a real one
``SPM_TILED_URI``             Tiled server, e.g. ``http://127.0.0.1:8000``
``SPM_TILED_API_KEY``         its API key (or ``TILED_API_KEY``)
``EPICS_CA_*``                Channel Access settings when there is no state file
============================  ============================================================
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from bluesky.callbacks.mpl_plotting import QtAwareCallback
from event_model.documents import Event, EventDescriptor, RunStart

from spm_bluesky import schema
from spm_bluesky.services.credentials import tiled_api_key
from spm_bluesky.services.launch import (
    DEFAULT_PREFIX,
    STATE_FILE,
    ServiceState,
    client_ca_env,
    data_dir_from,
)

if TYPE_CHECKING:
    from bluesky_tiled_plugins.clients.catalog_of_bluesky_runs import CatalogOfBlueskyRuns

    from spm_bluesky.devices.stm import STM

#: Where RE.md is kept (a bluesky PersistentDict), inside the data directory.
METADATA_DIR = "re_md"
#: Where TiledWriter puts runs it could not write to Tiled.
BACKUP_DIR = "tiled-backup"
#: The approach-area mask file of the data directory, for plans given ``mask_path``.
AREA_MASK_FILE = "area_mask.json"


class ServiceMissing(RuntimeError):
    """A service the session needs is not configured or does not answer."""


def _flag(value: str) -> bool:
    return value.strip().lower() not in ("0", "no", "false", "off", "")


@dataclass(frozen=True)
class SessionSettings:
    """Where the session's services are, from the state file and the environment."""

    data_dir: Path
    prefix: str
    sim: bool
    tiled_uri: str | None
    tiled_api_key: str | None
    metadata_dir: Path
    epics_env: dict[str, str] = field(default_factory=dict)
    source: str = "environment"

    @classmethod
    def resolve(cls, environ: Mapping[str, str] = os.environ) -> SessionSettings:
        """Read ``<data dir>/services.json`` if there is one; ``SPM_*`` variables override it."""
        data_dir = data_dir_from(None, environ)
        state = ServiceState.read(data_dir)
        sim = environ.get("SPM_STM_SIM")
        return cls(
            data_dir=data_dir,
            prefix=environ.get("SPM_STM_PREFIX") or (state.prefix if state else DEFAULT_PREFIX),
            sim=_flag(sim) if sim is not None else (state.sim if state else True),
            tiled_uri=environ.get("SPM_TILED_URI") or (state.tiled_uri if state else None),
            tiled_api_key=tiled_api_key(data_dir=data_dir, environ=environ),
            metadata_dir=Path(environ.get("SPM_METADATA_DIR") or data_dir / METADATA_DIR),
            epics_env=client_ca_env(state.epics_env) if state else {},
            source=str(data_dir / STATE_FILE) if state else "environment",
        )

    def apply_epics_env(self) -> None:
        """Put the recorded CA settings into ``os.environ``: before any CA client starts."""
        os.environ.update(self.epics_env)

    @property
    def backup_dir(self) -> Path:
        """Where TiledWriter writes runs that Tiled did not take."""
        return self.data_dir / BACKUP_DIR

    @property
    def area_mask(self) -> str:
        """The mask file of this data directory (``survey(..., mask_path=...)``), kept
        across restarts; plans check it is writable before they act."""
        return str(self.data_dir / AREA_MASK_FILE)

    def ca_address(self) -> str:
        """The CA address list and port in use, for messages."""
        env = {**os.environ, **self.epics_env}
        return (f"EPICS_CA_ADDR_LIST={env.get('EPICS_CA_ADDR_LIST', '(auto)')} "
                f"EPICS_CA_SERVER_PORT={env.get('EPICS_CA_SERVER_PORT', '5064')}")

    def describe(self) -> str:
        """One line: where the settings came from and what they point to."""
        return (f"data dir {self.data_dir}; STM prefix {self.prefix} ({self.ca_address()}); "
                f"Tiled {self.tiled_uri or '(none)'}; settings from {self.source}")


_HINT = "start the services with `spm-bluesky up` (check them with `spm-bluesky status`)"


def connect_tiled(settings: SessionSettings) -> CatalogOfBlueskyRuns:
    """The Tiled catalog of the session; ServiceMissing if it is not configured or down."""
    import httpx

    from spm_bluesky.storage import connect

    if not settings.tiled_uri or not settings.tiled_api_key:
        raise ServiceMissing(
            f"no Tiled server is configured: no state file in {settings.data_dir} and no "
            f"SPM_TILED_URI/SPM_TILED_API_KEY; {_HINT}")
    try:
        return connect(settings.tiled_uri, settings.tiled_api_key)
    except httpx.HTTPError as err:
        raise ServiceMissing(
            f"Tiled at {settings.tiled_uri} refused or did not answer ({err}); {_HINT}"
        ) from None


def connect_stm(settings: SessionSettings, timeout: float = 10.0) -> STM:
    """The STM device named ``stm``, connected in the RunEngine's event loop.

    A RunEngine must exist (its event loop runs the connection). Raises ServiceMissing with
    the PVs that did not connect if the IOC does not answer.
    """
    from bluesky.run_engine import call_in_bluesky_event_loop
    from ophyd_async.core import NotConnectedError

    from spm_bluesky.devices.stm import STM

    stm = STM(settings.prefix, name="stm", sim=settings.sim)
    try:
        call_in_bluesky_event_loop(stm.connect(timeout=timeout))
    except NotConnectedError as err:
        lines = str(err).strip().splitlines()
        more = f"\n  ... {len(lines) - 8} more lines" if len(lines) > 8 else ""
        raise ServiceMissing(
            f"the STM (prefix {settings.prefix}) does not answer over Channel Access "
            f"({settings.ca_address()}); {_HINT}. Not connected:\n"
            + "\n".join(lines[:8]) + more) from None
    return stm


def in_queueserver() -> bool:
    """True inside a bluesky-queueserver worker."""
    try:
        from bluesky_queueserver import is_re_worker_active
    except ImportError:
        return False
    return bool(is_re_worker_active())


def interactive() -> bool:
    """True in an IPython session of a person (not the queueserver's worker)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return get_ipython() is not None and not in_queueserver()


class LatestImage(QtAwareCallback):
    """Shows the newest 2-D image of the running run in one reused matplotlib figure.

    Works with any backend, headless (Agg) included; with a Qt backend documents are moved
    to the main thread like bluesky's own live plots. ``shown`` counts the images of the
    current run, ``last`` is the newest one.
    """

    def __init__(self, figure_name: str = "spm-bluesky: latest image", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.figure_name = figure_name
        self.shown = 0
        self.last: np.ndarray | None = None
        self._fields: dict[str, tuple[str, str]] = {}
        self._title = ""
        self._figure: Any = None
        self._artist: Any = None

    def start(self, doc: RunStart) -> None:
        """A new run: forget the previous run's streams."""
        self._fields.clear()
        self.shown = 0
        self._title = f"scan {doc.get('scan_id', '?')} {doc.get(schema.PLAN_NAME, '')}".strip()

    def descriptor(self, doc: EventDescriptor) -> None:
        """Remember the first 2-D field of the stream, if any."""
        for key, data_key in doc["data_keys"].items():
            if len(data_key.get("shape") or ()) == 2:
                self._fields[doc["uid"]] = (key, data_key.get("units") or "")
                return

    def event(self, doc: Event) -> Event:
        """Show the event's image."""
        field_units = self._fields.get(doc["descriptor"])
        if field_units is not None and field_units[0] in doc["data"]:
            key, units = field_units
            image = np.asarray(doc["data"][key], dtype=float)
            self.last = image
            self.shown += 1
            self._show(image, key, units, doc.get("seq_num", self.shown))
        return doc

    def _show(self, image: np.ndarray, key: str, units: str, seq_num: int) -> None:
        import matplotlib.pyplot as plt

        scale, units = (1e9, "nm") if units == "m" else (1.0, units)
        if self._figure is None or not plt.fignum_exists(self._figure.number):
            self._figure, ax = plt.subplots(num=self.figure_name)
            self._artist = ax.imshow(image * scale, cmap="afmhot", origin="upper")
            self._figure.colorbar(self._artist, ax=ax, label=f"{key} ({units})")
        else:
            self._artist.set_data(image * scale)
            self._artist.autoscale()
        self._artist.axes.set_title(f"{self._title}: image {seq_num}")
        self._figure.canvas.draw_idle()
