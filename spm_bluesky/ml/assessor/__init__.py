"""The CNN tip-quality assessor: model, twin data, augmentation, training, evaluation, card.

``from spm_bluesky.ml.assessor import load_assessor`` loads the shipped weights. Importing
this package does not import torch until :func:`load_assessor` or :class:`TipNetAssessor`
is used, so the torch-free parts (data, metrics, config) stay light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from spm_bluesky.ml.assessor.assessor import TipNetAssessor, load_assessor

__all__ = ["TipNetAssessor", "load_assessor"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from spm_bluesky.ml.assessor import assessor

        return getattr(assessor, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
