"""A person's labels of stored images, kept in Tiled as Bluesky runs like everything else.

A label names one stored image (a run of a session and the ``seq_num`` of its ``primary``
event) and the tip class a person sees in it: one of :class:`LabelClass`. It records who gave
it and when, and which assessor verdict it answers, so that disagreements can be found later.

:func:`write_labels` checks every label against the catalog first and refuses the whole batch
(:class:`LabelError`, nothing written) if any names a session, run, image or class that does
not exist; then it stores the batch as one ``label_images`` run (a ``labels`` stream, one
event per label) through the project's TiledWriter (:func:`~spm_bluesky.storage.importer.
store_run`), whole or not at all. :func:`read_labels` reads them back, the newest label of
each image winning: labelling an image again replaces the older label, which stays stored.

    from spm_bluesky.storage import ImageLabel, LabelClass, connect, read_labels, write_labels
    write_labels(client, [ImageLabel(session, run_uid, 3, LabelClass.BLUNT, "ada", time.time())])
    labels = read_labels(client, session)
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import pandas as pd
from event_model import compose_run
from event_model.documents import Document

from spm_bluesky import schema
from spm_bluesky.storage.importer import store_run
from spm_bluesky.storage.read import read_stream_table, runs_by_session, runs_of_plan


class LabelClass(StrEnum):
    """What a person sees in an image: the assessor's five tip classes, or ``unclear``."""

    GOOD = "good"
    MULTI_APEX = "multi_apex"
    BLUNT = "blunt"
    ADSORBATE = "adsorbate"
    UNSTABLE = "unstable"
    #: The person cannot tell: stored, but never trained on.
    UNCLEAR = "unclear"


@dataclass(frozen=True)
class ImageLabel:
    """One person's class for one stored image (run ``run_uid``, ``primary`` event
    ``seq_num``, of session ``session_uid``), and the assessor verdict it answers."""

    session_uid: str
    run_uid: str
    seq_num: int
    label: LabelClass
    who: str
    #: Unix time the person labelled the image.
    when: float
    #: The assessor whose verdict the label answers, that assessor's class and its p(good).
    model_id: str | None = None
    model_label: str | None = None
    p_good: float | None = None


class LabelError(ValueError):
    """A label names a session, run, image or class that does not exist (the message says
    which); nothing was written."""


def label_class(text: str) -> LabelClass:
    """The :class:`LabelClass` spelled ``text``; :class:`LabelError` on anything else."""
    try:
        return LabelClass(text)
    except ValueError:
        choices = ", ".join(c.value for c in LabelClass)
        raise LabelError(f"unknown label class {text!r}: use one of {choices}") from None


def _check_fields(label: ImageLabel) -> None:
    """Refuse a label whose own fields are malformed (class, seq_num, who, when, p_good)."""
    label_class(str(label.label))
    if isinstance(label.seq_num, bool) or not isinstance(label.seq_num, int) or (
            label.seq_num < 1):
        raise LabelError(f"run {label.run_uid}: seq_num {label.seq_num!r} is not an event "
                         "number (1, 2, ...)")
    if not label.who.strip():
        raise LabelError(f"run {label.run_uid} event {label.seq_num}: who labelled it is empty")
    if not math.isfinite(label.when):
        raise LabelError(f"run {label.run_uid} event {label.seq_num}: when={label.when!r} "
                         "is not a time")
    if label.p_good is not None and not 0.0 <= label.p_good <= 1.0:
        raise LabelError(f"run {label.run_uid} event {label.seq_num}: p_good={label.p_good!r} "
                         "is not a probability")


def _image_events(client: Any, session_uid: str, run_uid: str) -> frozenset[int]:
    """The ``seq_num`` of every image in run ``run_uid`` of session ``session_uid``;
    :class:`LabelError` if the session, the run or its images are not there."""
    try:
        run = client[run_uid]
    except KeyError:
        run = None
    if run is None:
        if not any(True for _ in runs_by_session(client, session_uid)):
            raise LabelError(f"no session {session_uid!r} in Tiled")
        raise LabelError(f"no run {run_uid!r} in Tiled (session {session_uid})")
    start = run.metadata.get("start", {})
    if start.get(schema.SESSION_UID) != session_uid:
        if not any(True for _ in runs_by_session(client, session_uid)):
            raise LabelError(f"no session {session_uid!r} in Tiled")
        raise LabelError(f"run {run_uid} does not belong to session {session_uid} "
                         f"(its session: {start.get(schema.SESSION_UID)!r})")
    parts = run[schema.PRIMARY].base if schema.PRIMARY in run else None
    if parts is None or schema.SCAN_IMAGE not in parts.metadata.get("data_keys", {}):
        raise LabelError(f"run {run_uid} ({start.get(schema.PLAN_NAME)}) holds no images")
    table = read_stream_table(run, schema.PRIMARY)
    return frozenset() if table is None else frozenset(int(s) for s in table.index)


def validate_labels(client: Any, labels: Sequence[ImageLabel]) -> None:
    """Check every label against the catalog (reading each named run once);
    :class:`LabelError` naming the first bad one."""
    if not labels:
        raise LabelError("no labels to write")
    events: dict[tuple[str, str], frozenset[int]] = {}
    for label in labels:
        _check_fields(label)
        run = (label.session_uid, label.run_uid)
        if run not in events:
            events[run] = _image_events(client, *run)
        if label.seq_num not in events[run]:
            raise LabelError(f"run {label.run_uid} has no image with seq_num {label.seq_num} "
                             f"(it has {len(events[run])})")
    sessions = {label.session_uid for label in labels}
    if len(sessions) > 1:
        raise LabelError(f"one write labels one session, not {len(sessions)}: "
                         f"{', '.join(sorted(sessions))}")
    who = {label.who for label in labels}
    if len(who) > 1:
        raise LabelError(f"one write holds one person's labels, not {sorted(who)}")


def _label_data(label: ImageLabel) -> dict[str, Any]:
    return {
        schema.LABEL_RUN_UID: label.run_uid,
        schema.LABEL_SEQ_NUM: label.seq_num,
        schema.LABEL_CLASS: str(label.label),
        schema.LABEL_WHO: label.who,
        schema.LABEL_WHEN: float(label.when),
        schema.LABEL_MODEL_ID: label.model_id or "",
        schema.LABEL_MODEL_CLASS: label.model_label or "",
        schema.LABEL_P_GOOD: math.nan if label.p_good is None else float(label.p_good),
    }


#: (dtype, units) of each label field in the stream's descriptor.
_FIELDS: dict[str, tuple[str, str | None]] = {
    schema.LABEL_RUN_UID: ("string", None),
    schema.LABEL_SEQ_NUM: ("integer", None),
    schema.LABEL_CLASS: ("string", None),
    schema.LABEL_WHO: ("string", None),
    schema.LABEL_WHEN: ("number", "s"),
    schema.LABEL_MODEL_ID: ("string", None),
    schema.LABEL_MODEL_CLASS: ("string", None),
    schema.LABEL_P_GOOD: ("number", None),
}


def label_documents(labels: Sequence[ImageLabel]) -> list[tuple[str, Document]]:
    """The documents of one ``label_images`` run holding ``labels`` (not validated)."""
    now = time.time()
    first = labels[0]
    run = compose_run(time=now, metadata={
        schema.PLAN_NAME: schema.LABEL_IMAGES,
        schema.SESSION_UID: first.session_uid,
        schema.WHO: first.who,
        "num_points": len(labels),
    })
    data_keys: dict[str, Any] = {
        key: {"source": "person", "dtype": dtype, "shape": [],
              **({"units": units} if units else {})}
        for key, (dtype, units) in _FIELDS.items()}
    descriptor = run.compose_descriptor(
        name=schema.LABELS, data_keys=data_keys, time=now,
        object_keys={schema.LABEL_DEVICE: list(data_keys)})
    docs: list[tuple[str, Document]] = [
        ("start", run.start_doc), ("descriptor", descriptor.descriptor_doc)]
    for n, label in enumerate(labels, start=1):
        data = _label_data(label)
        docs.append(("event", descriptor.compose_event(
            data=data, timestamps=dict.fromkeys(data, float(label.when)), seq_num=n,
            time=float(label.when))))
    docs.append(("stop", run.compose_stop(time=now)))
    return docs


def write_labels(client: Any, labels: Sequence[ImageLabel]) -> str:
    """Store ``labels`` (one session, one person) as one ``label_images`` run; its uid.

    Every label is checked first (:func:`validate_labels`): on any error
    :class:`LabelError` is raised and nothing is written. A failed write leaves nothing
    either (:class:`~spm_bluesky.storage.importer.StoreFailed`).
    """
    labels = list(labels)
    validate_labels(client, labels)
    return store_run(client, label_documents(labels))


def _optional(value: Any) -> str | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) or (
        value == "") else str(value)


def _labels_of_run(session_uid: str, table: pd.DataFrame) -> Iterable[tuple[int, ImageLabel]]:
    for seq, row in zip(table.index, table.to_dict("records"), strict=True):
        p_good = float(row[schema.LABEL_P_GOOD])
        yield int(seq), ImageLabel(
            session_uid=session_uid,
            run_uid=str(row[schema.LABEL_RUN_UID]),
            seq_num=int(row[schema.LABEL_SEQ_NUM]),
            label=label_class(str(row[schema.LABEL_CLASS])),
            who=str(row[schema.LABEL_WHO]),
            when=float(row[schema.LABEL_WHEN]),
            model_id=_optional(row[schema.LABEL_MODEL_ID]),
            model_label=_optional(row[schema.LABEL_MODEL_CLASS]),
            p_good=None if math.isnan(p_good) else p_good,
        )


def label_run_uids(client: Any, session_uid: str | None = None) -> list[str]:
    """The uids of the ``label_images`` runs (of one session, or of all), oldest first."""
    return [str(uid) for uid in runs_of_plan(client, schema.LABEL_IMAGES, session_uid)]


def read_labels(client: Any, session_uid: str | None = None) -> list[ImageLabel]:
    """Every image's current label (of one session, or of all): where an image was labelled
    more than once, the newest label (latest ``when``; a later write on a tie) wins.

    Ordered by session, then run uid and ``seq_num`` of the image.
    """
    found: list[tuple[float, float, int, ImageLabel]] = []
    for run in runs_of_plan(client, schema.LABEL_IMAGES, session_uid).values():
        start = run.metadata["start"]
        table = read_stream_table(run, schema.LABELS)
        if table is None:
            continue
        for seq, label in _labels_of_run(str(start[schema.SESSION_UID]), table):
            found.append((label.when, float(start["time"]), seq, label))
    newest: dict[tuple[str, str, int], ImageLabel] = {}
    for *_, label in sorted(found, key=lambda item: item[:3]):
        newest[(label.session_uid, label.run_uid, label.seq_num)] = label
    return [newest[key] for key in sorted(newest)]
