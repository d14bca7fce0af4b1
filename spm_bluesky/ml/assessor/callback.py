"""Assessing stored runs: a document callback for :func:`spm_bluesky.storage.tiled.replay`.

>>> from spm_bluesky.storage.tiled import replay
>>> callback = ReplayAssessor(load_assessor())
>>> replay(client[uid], callback)
>>> callback.results        # one ReplayedAssessment per image event

The callback finds the image field by its shape (a 2-D array in metres) in the watched
stream, the frame size in the sibling ``-size`` field (the STM's scan detector writes both),
and, when the run has a ``truth`` stream (the twin), the true tip class of the same event
number. Torch-free itself: it uses any :class:`~spm_bluesky.protocols.Assessor`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from spm_bluesky.protocols import Assessment, Assessor

TRUTH_STREAM = "truth"
TRUTH_SUFFIX = "tip_state"


@dataclass(frozen=True)
class ReplayedAssessment:
    """One assessed image of a replayed run."""

    run_uid: str
    seq_num: int
    field: str
    assessment: Assessment
    #: The twin's true tip class for this event, when the run recorded it.
    truth: str | None = None


class ReplayAssessor:
    """Document callback: assesses every 2-D image event of ``stream`` in replayed runs.

    ``image_field`` picks the field (default: the only 2-D array field in metres); the
    scan size comes from ``<prefix>-size`` beside ``<prefix>-image``, else ``scan_size_m``.
    """

    def __init__(
        self,
        assessor: Assessor,
        stream: str = "primary",
        image_field: str | None = None,
        scan_size_m: float | None = None,
    ) -> None:
        self.assessor = assessor
        self.stream = stream
        self.image_field = image_field
        self.scan_size_m = scan_size_m
        self.results: list[ReplayedAssessment] = []
        self._run_uid = ""
        self._descriptors: dict[str, tuple[str, str | None, str | None]] = {}
        self._truth: dict[int, str] = {}

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        handler = getattr(self, f"_{name}", None)
        if handler is not None:
            handler(doc)

    def _start(self, doc: dict[str, Any]) -> None:
        self._run_uid = doc["uid"]
        self._descriptors.clear()
        self._truth.clear()

    def _descriptor(self, doc: dict[str, Any]) -> None:
        keys = doc["data_keys"]
        if doc["name"] == TRUTH_STREAM:
            field = next((k for k in keys if k.endswith(TRUTH_SUFFIX)), None)
            self._descriptors[doc["uid"]] = (TRUTH_STREAM, field, None)
        elif doc["name"] == self.stream:
            field = self.image_field or _image_field(keys)
            size = None
            if field is not None and field.endswith("image"):
                candidate = field[: -len("image")] + "size"
                size = candidate if candidate in keys else None
            self._descriptors[doc["uid"]] = (self.stream, field, size)

    def _event(self, doc: dict[str, Any]) -> None:
        stream, field, size_field = self._descriptors.get(doc["descriptor"], ("", None, None))
        if field is None or field not in doc["data"]:
            return
        if stream == TRUTH_STREAM:
            self._truth[doc["seq_num"]] = str(doc["data"][field])
            self._attach_truth(doc["seq_num"])
            return
        size = doc["data"][size_field] if size_field else self.scan_size_m
        if size is None:
            raise ValueError(f"no scan size for {field}: pass scan_size_m to ReplayAssessor")
        assessment = self.assessor.assess(np.asarray(doc["data"][field]), float(size))
        self.results.append(ReplayedAssessment(self._run_uid, doc["seq_num"], field, assessment,
                                               self._truth.get(doc["seq_num"])))

    def _event_page(self, doc: dict[str, Any]) -> None:
        from event_model import unpack_event_page

        for event in unpack_event_page(doc):
            self._event(event)

    def _attach_truth(self, seq_num: int) -> None:
        """Give the truth to an image of this run assessed before its truth event arrived."""
        for index, result in enumerate(self.results):
            if (result.run_uid == self._run_uid and result.seq_num == seq_num
                    and result.truth is None):
                self.results[index] = ReplayedAssessment(
                    result.run_uid, result.seq_num, result.field, result.assessment,
                    self._truth[seq_num])


def _image_field(data_keys: dict[str, dict[str, Any]]) -> str | None:
    """The one 2-D array field in metres (the image), if exactly one exists."""
    found = [k for k, v in data_keys.items()
             if len(v.get("shape") or []) == 2 and v.get("units") in ("m", None)]
    return found[0] if len(found) == 1 else None
