"""Assessing stored runs: a document callback for :func:`spm_bluesky.storage.feed_documents`.

>>> from spm_bluesky.storage import feed_documents
>>> callback = AssessingCallback(load_assessor())
>>> feed_documents(client[uid], callback)
>>> callback.results        # one ImageAssessment per image event

The callback finds the image field by its shape (a 2-D array in metres) in the watched
stream, the frame size in the sibling ``-size`` field (the STM's scan detector writes both),
and, when the run has a ``truth`` stream (the twin), the true tip class of the same event
number. Torch-free itself: it uses any :class:`~spm_bluesky.protocols.Assessor`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
from event_model import unpack_event_page
from event_model.documents import DataKey, Document, Event, EventDescriptor, EventPage, RunStart

from spm_bluesky import schema
from spm_bluesky.protocols import Assessment, Assessor

#: The parts of an image data key and of its frame size (``stm-scan-image``, ``stm-scan-size``).
_IMAGE_SUFFIX = schema.SCAN_IMAGE.rsplit("-", 1)[1]
_SIZE_SUFFIX = schema.SCAN_SIZE.rsplit("-", 1)[1]


@dataclass(frozen=True)
class ImageAssessment:
    """One assessed image of a stored run."""

    run_uid: str
    seq_num: int
    field: str
    assessment: Assessment
    #: The twin's true tip class for this event, when the run recorded it.
    truth: str | None = None


class AssessingCallback:
    """Document callback: assesses every 2-D image event of ``stream`` in the runs it is fed.

    ``image_field`` picks the field (default: the only 2-D array field in metres); the
    scan size comes from ``<prefix>-size`` beside ``<prefix>-image``, else ``scan_size_m``.
    """

    def __init__(
        self,
        assessor: Assessor,
        stream: str = schema.PRIMARY,
        image_field: str | None = None,
        scan_size_m: float | None = None,
    ) -> None:
        self.assessor = assessor
        self.stream = stream
        self.image_field = image_field
        self.scan_size_m = scan_size_m
        self.results: list[ImageAssessment] = []
        self._run_uid = ""
        self._descriptors: dict[str, tuple[str, str | None, str | None]] = {}
        self._truth: dict[int, str] = {}

    def __call__(self, name: str, doc: Document) -> None:
        if name == "start":
            self._start(cast(RunStart, doc))
        elif name == "descriptor":
            self._descriptor(cast(EventDescriptor, doc))
        elif name == "event":
            self._event(cast(Event, doc))
        elif name == "event_page":
            for event in unpack_event_page(cast(EventPage, doc)):
                self._event(event)

    def _start(self, doc: RunStart) -> None:
        self._run_uid = doc["uid"]
        self._descriptors.clear()
        self._truth.clear()

    def _descriptor(self, doc: EventDescriptor) -> None:
        keys = doc["data_keys"]
        stream = doc.get("name")
        if stream == schema.TRUTH:
            field = schema.SIM_TIP_STATE if schema.SIM_TIP_STATE in keys else None
            self._descriptors[doc["uid"]] = (schema.TRUTH, field, None)
        elif stream == self.stream:
            field = self.image_field or _image_field(keys)
            size = None
            if field is not None and field.endswith(_IMAGE_SUFFIX):
                candidate = field[: -len(_IMAGE_SUFFIX)] + _SIZE_SUFFIX
                size = candidate if candidate in keys else None
            self._descriptors[doc["uid"]] = (self.stream, field, size)

    def _event(self, doc: Event) -> None:
        stream, field, size_field = self._descriptors.get(doc["descriptor"], ("", None, None))
        data: Mapping[str, Any] = doc["data"]
        if field is None or field not in data:
            return
        if stream == schema.TRUTH:
            self._truth[doc["seq_num"]] = str(data[field])
            self._attach_truth(doc["seq_num"])
            return
        size = data[size_field] if size_field else self.scan_size_m
        if size is None:
            raise ValueError(f"no scan size for {field}: pass scan_size_m to AssessingCallback")
        assessment = self.assessor.assess(np.asarray(data[field]), float(size))
        self.results.append(ImageAssessment(self._run_uid, doc["seq_num"], field, assessment,
                                            self._truth.get(doc["seq_num"])))

    def _attach_truth(self, seq_num: int) -> None:
        """Give the truth to an image of this run assessed before its truth event arrived."""
        for index, result in enumerate(self.results):
            if (result.run_uid == self._run_uid and result.seq_num == seq_num
                    and result.truth is None):
                self.results[index] = ImageAssessment(
                    result.run_uid, result.seq_num, result.field, result.assessment,
                    self._truth[seq_num])


def _image_field(data_keys: Mapping[str, DataKey]) -> str | None:
    """The one 2-D array field in metres (the image), if exactly one exists."""
    found = [k for k, v in data_keys.items()
             if len(v.get("shape") or []) == 2 and v.get("units") in ("m", None)]
    return found[0] if len(found) == 1 else None
