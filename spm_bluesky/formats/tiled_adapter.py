"""Tiled adapters that serve Nanonis ``.sxm`` and Createc ``.dat`` files as arrays.

Each file becomes one array node of shape ``(images, ny, nx)``, float32, the images in file
order (``metadata["scan"]["channels"]`` names each one's channel, direction and unit), in
the package's convention: ``[i, 0]`` is the line at the lowest y. The node's metadata is the
scan's fields (``scan``), the file's whole header (``header``), its ``sha256`` and its
``format``.

Tiled picks an adapter by MIME type. Serve a folder with::

    tiled serve directory DATA_DIR \\
        --mimetype-hook spm_bluesky.formats.tiled_adapter:detect_mimetype \\
        --adapter application/x-nanonis-sxm=spm_bluesky.formats.tiled_adapter:SXMAdapter \\
        --adapter application/x-createc-dat=spm_bluesky.formats.tiled_adapter:CreatecAdapter

(the hook recognises both formats by their first bytes; for ``.sxm`` alone, ``--ext
.sxm=application/x-nanonis-sxm`` does as well). In a catalog's config, the same two
mappings go under ``adapters_by_mimetype`` (see :data:`ADAPTERS_BY_MIMETYPE`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from tiled.adapters.core import Adapter
from tiled.adapters.utils import init_adapter_from_catalog
from tiled.catalog.orm import Node
from tiled.ndslice import NDSlice
from tiled.structures.array import ArrayStructure, BuiltinDtype
from tiled.structures.core import Spec, StructureFamily
from tiled.structures.data_source import DataSource
from tiled.type_aliases import JSON
from tiled.utils import path_from_uri

from ._model import ScanFile
from .createc import MAGIC as CREATEC_MAGIC
from .createc import read_createc
from .sxm import read_sxm

SXM_MIMETYPE = "application/x-nanonis-sxm"
CREATEC_MIMETYPE = "application/x-createc-dat"
#: For a catalog's ``adapters_by_mimetype`` (``tiled register`` / a serve config).
ADAPTERS_BY_MIMETYPE = {
    SXM_MIMETYPE: "spm_bluesky.formats.tiled_adapter:SXMAdapter",
    CREATEC_MIMETYPE: "spm_bluesky.formats.tiled_adapter:CreatecAdapter",
}
#: For ``mimetypes_by_file_ext`` (``.dat`` is too common a suffix to claim: use the hook).
MIMETYPES_BY_FILE_EXT = {".sxm": SXM_MIMETYPE}
_MAGIC = ((b":NANONIS_VERSION:", SXM_MIMETYPE), (CREATEC_MAGIC, CREATEC_MIMETYPE))


def detect_mimetype(path: Path, mimetype: str | None) -> str | None:
    """Tiled's ``--mimetype-hook``: our MIME type for a file that starts like ours, else
    whatever Tiled found from the extension."""
    try:
        with open(path, "rb") as f:
            start = f.read(32)
    except OSError:
        return mimetype
    for magic, ours in _MAGIC:
        if start.startswith(magic):
            return ours
    return mimetype


def scan_metadata(scan: ScanFile) -> dict[str, Any]:
    """What a node serving ``scan`` carries as metadata (JSON)."""
    return {
        "scan": scan.scan_metadata(),
        "header": dict(scan.header),
        "sha256": scan.sha256,
        "format": scan.format,
    }


class _ScanFileAdapter(Adapter[ArrayStructure]):
    """One STM image file as one ``(images, ny, nx)`` float32 array; the file is read once."""

    structure_family: ClassVar[StructureFamily] = StructureFamily.array

    @staticmethod
    def _read(path: str) -> ScanFile:
        raise NotImplementedError

    def __init__(
        self,
        data_uri: str,
        structure: ArrayStructure | None = None,
        *,
        metadata: JSON | None = None,
        specs: list[Spec] | None = None,
    ) -> None:
        scan = self._read(str(path_from_uri(data_uri)))
        self._array: npt.NDArray[np.float32] = np.stack([i.data for i in scan.images])
        if structure is None:
            structure = ArrayStructure(
                data_type=BuiltinDtype.from_numpy_dtype(self._array.dtype),
                shape=self._array.shape,
                chunks=tuple((n,) for n in self._array.shape),
                dims=("image", "y", "x"),
            )
        super().__init__(structure, metadata=metadata or scan_metadata(scan), specs=specs)

    @classmethod
    def from_uris(cls, data_uri: str, **kwargs: Any) -> _ScanFileAdapter:
        return cls(data_uri)

    @classmethod
    def from_catalog(
        cls, data_source: DataSource[ArrayStructure], node: Node, /, **kwargs: Any
    ) -> _ScanFileAdapter:
        return init_adapter_from_catalog(cls, data_source, node, **kwargs)

    def read(self, slice: NDSlice = NDSlice(...)) -> npt.NDArray[np.float32]:  # noqa: B008
        return self._array[slice] if slice else self._array

    def read_block(
        self, block: tuple[int, ...], slice: NDSlice = NDSlice(...)  # noqa: B008
    ) -> npt.NDArray[np.float32]:
        if any(block):
            raise IndexError(block)
        return self.read(slice)


class SXMAdapter(_ScanFileAdapter):
    """A Nanonis ``.sxm`` file (MIME type :data:`SXM_MIMETYPE`)."""

    _read = staticmethod(read_sxm)


class CreatecAdapter(_ScanFileAdapter):
    """A Createc ``.dat`` image (MIME type :data:`CREATEC_MIMETYPE`)."""

    _read = staticmethod(read_createc)
