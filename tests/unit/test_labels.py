"""Label classes and the documents of a ``label_images`` run, without a server."""

from __future__ import annotations

import math

import pytest
from event_model import DocumentNames, schema_validators

from spm_bluesky import schema
from spm_bluesky.protocols import CLASSES
from spm_bluesky.storage import ImageLabel, LabelClass, LabelError, label_class, write_labels
from spm_bluesky.storage.labels import label_documents


def test_the_label_classes_are_the_assessors_and_unclear() -> None:
    assert [c.value for c in LabelClass] == [*CLASSES, "unclear"]
    assert label_class("multi_apex") is LabelClass.MULTI_APEX
    with pytest.raises(LabelError, match="unknown label class 'Good': use one of good, "):
        label_class("Good")


def test_a_label_run_is_valid_bluesky_documents_one_event_per_label() -> None:
    labels = [ImageLabel("s1", "run-a", 3, LabelClass.BLUNT, "ada", 1.7e9, "tipnet-x",
                         "good", 0.9),
              ImageLabel("s1", "run-b", 1, LabelClass.UNCLEAR, "ada", 1.7e9 + 5)]
    docs = label_documents(labels)
    assert [name for name, _ in docs] == ["start", "descriptor", "event", "event", "stop"]
    for name, doc in docs:
        schema_validators[DocumentNames(name)].validate(doc)  # event-model's own JSON schemas
    start, descriptor = docs[0][1], docs[1][1]
    assert start[schema.PLAN_NAME] == schema.LABEL_IMAGES
    assert start[schema.SESSION_UID] == "s1" and start[schema.WHO] == "ada"
    assert descriptor["name"] == schema.LABELS
    first, second = docs[2][1]["data"], docs[3][1]["data"]
    assert first[schema.LABEL_RUN_UID] == "run-a" and first[schema.LABEL_SEQ_NUM] == 3
    assert first[schema.LABEL_CLASS] == "blunt" and first[schema.LABEL_P_GOOD] == 0.9
    assert first[schema.LABEL_MODEL_ID] == "tipnet-x" and first[schema.LABEL_MODEL_CLASS] == "good"
    assert second[schema.LABEL_MODEL_ID] == "" and math.isnan(second[schema.LABEL_P_GOOD])
    assert docs[3][1]["time"] == 1.7e9 + 5


def test_an_empty_batch_is_refused_before_the_catalog_is_touched() -> None:
    with pytest.raises(LabelError, match="no labels to write"):
        write_labels(None, [])
