"""Judging images inside plans: the ``assessment`` stream.

:func:`assess_image` is a plan stub for use inside a run: it takes the last frame the STM's
scan detector holds (or a reading a plan already has), asks an assessor, writes the answer
into an :class:`AssessmentDevice` (soft signals, no PVs) and reads that device into the
``assessment`` stream: ``p_good``, one ``p_<class>`` per tip class, ``label``,
``model_id``, ``unsure_score`` and ``unsure``. :func:`assess_last_image` wraps it in a run
of its own.

No torch here: the assessor is duck-typed (:class:`~spm_bluesky.protocols.Assessor`,
e.g. ``spm_bluesky.ml.assessor.load_assessor()``), so this module imports without it.
"""

from __future__ import annotations

from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import numpy as np
from bluesky.protocols import Reading
from bluesky.utils import MsgGenerator
from ophyd_async.core import StandardReadable, StandardReadableFormat, soft_signal_rw
from ophyd_async.plan_stubs import ensure_connected

from spm_bluesky import schema
from spm_bluesky.devices.stm import STM
from spm_bluesky.plans._common import check_stm, read_truth, run_metadata
from spm_bluesky.protocols import CLASSES, Assessment, Assessor

#: Stream the assessments go to.
STREAM = schema.ASSESSMENT


class AssessmentDevice(StandardReadable):
    """Soft signals holding the latest assessment; read into the ``assessment`` stream.

    Read keys (device named ``assessment``): ``assessment-p_good``, ``assessment-p_<class>``
    for every other class, ``assessment-label``, ``assessment-model_id``,
    ``assessment-unsure_score`` (NaN when the assessor has none) and ``assessment-unsure``.
    """

    def __init__(self, name: str = schema.ASSESSMENT_DEVICE) -> None:
        with self.add_children_as_readables(StandardReadableFormat.HINTED_SIGNAL):
            self.p_good = soft_signal_rw(float, float("nan"))
        with self.add_children_as_readables():
            for cls in CLASSES[1:]:
                setattr(self, f"p_{cls}", soft_signal_rw(float, float("nan")))
            self.label = soft_signal_rw(str, "")
            self.model_id = soft_signal_rw(str, "")
            self.unsure_score = soft_signal_rw(float, float("nan"))
            self.unsure = soft_signal_rw(bool, False)
        super().__init__(name=name)

    def settings(self, assessment: Assessment) -> list[Any]:
        """``bps.mv`` arguments that store ``assessment`` in the signals."""
        args: list[Any] = []
        for cls in CLASSES:
            args += [getattr(self, f"p_{cls}"), assessment.probabilities[cls]]
        return [*args, self.label, assessment.label, self.model_id, assessment.model_id,
                self.unsure_score, assessment.unsure_score, self.unsure, assessment.unsure]


def check_assessor(assessor: Any) -> None:
    """Raise TypeError unless ``assessor`` has ``model_id`` and ``assess``."""
    if not isinstance(assessor, Assessor):
        raise TypeError(f"assessor must have model_id and assess(image_m, scan_size_m), not "
                        f"{type(assessor).__name__}")


def frame_from_reading(stm: STM, reading: dict[str, Reading]) -> tuple[np.ndarray, float]:
    """(image in m, scan size in m) from a reading of ``stm.scan``."""
    try:
        image = np.asarray(reading[stm.scan.image.name]["value"], dtype=np.float64)
        size = float(reading[stm.scan.size.name]["value"])
    except KeyError as missing:
        raise ValueError(f"the reading has no {missing} (read stm.scan, not a part of it)") \
            from None
    return image, size


def assess_image(
    stm: STM,
    assessor: Assessor,
    device: AssessmentDevice,
    reading: dict[str, Reading] | None = None,
) -> MsgGenerator[Assessment]:
    """Assess the frame in ``reading`` (default: read ``stm.scan`` now, i.e. the last frame)
    and emit one ``assessment`` event. Must run inside an open run. Returns the assessment.
    """
    check_stm(stm)
    check_assessor(assessor)
    yield from ensure_connected(device)
    if reading is None:
        reading = yield from bps.read(stm.scan)
    image, size = frame_from_reading(stm, reading)
    assessment = assessor.assess(image, size)
    yield from bps.mv(*device.settings(assessment))
    yield from bps.trigger_and_read([device], name=STREAM)
    return assessment


def assess_last_image(
    stm: STM,
    assessor: Assessor,
    device: AssessmentDevice | None = None,
    session_uid: str | None = None,
    md: dict[str, Any] | None = None,
) -> MsgGenerator[Assessment]:
    """A run that assesses the frame the STM last scanned (no new scan).

    Streams: ``assessment`` and, with the twin, ``truth``. The start document records the
    ``model_id``. Returns the assessment.
    """
    check_stm(stm)
    check_assessor(assessor)
    device = device or AssessmentDevice()
    run_md = yield from run_metadata(stm, schema.ASSESS_LAST_IMAGE, {}, session_uid,
                                     {schema.MODEL_IDS: {schema.MODEL_ASSESSOR: assessor.model_id},
                                      **(md or {})})
    result: list[Assessment] = []

    @bpp.run_decorator(md=run_md)
    def inner() -> MsgGenerator[None]:
        result.append((yield from assess_image(stm, assessor, device)))
        yield from read_truth(stm)

    yield from inner()
    return result[0]
