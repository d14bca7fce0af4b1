"""Machine learning: the CNN tip-quality assessor (torch is imported only in this package).

``from spm_bluesky.ml import load_assessor`` loads the shipped weights. Importing this
package does not import torch until :func:`load_assessor` or :class:`Assessor` is used, so
the torch-free parts (:mod:`.assessment`, :mod:`.dataset`, :mod:`.metrics`) stay light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .assessment import CLASSES, Assessment, AssessorLike

if TYPE_CHECKING:
    from .assessor import Assessor, load_assessor

__all__ = ["CLASSES", "Assessment", "Assessor", "AssessorLike", "load_assessor"]


def __getattr__(name: str) -> Any:
    if name in ("Assessor", "load_assessor"):
        from . import assessor

        return getattr(assessor, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
