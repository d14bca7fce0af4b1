"""The writer's event check: the verdict of event-model's full schema check, without walking
the event's values (numpy images), and so at a fraction of its cost."""

from __future__ import annotations

import time

import jsonschema
import numpy as np
import pytest
from event_model import DocumentNames, compose_run, schema_validators

from spm_bluesky.storage.writer import EnvelopeCheckingNormalizer


def _events(count: int, pixels: int = 64) -> list[dict]:
    """``count`` image events of a new run."""
    run = compose_run()
    bundle = run.compose_descriptor(name="primary", data_keys={
        "image": {"source": "test", "dtype": "array", "shape": [pixels, pixels]},
        "clock": {"source": "test", "dtype": "number", "shape": []}})
    rng = np.random.default_rng(0)
    events = [bundle.compose_event(data={"image": rng.normal(size=(pixels, pixels)),
                                         "clock": float(i)},
                                   timestamps={"image": 0.0, "clock": 0.0}, seq_num=i + 1)
              for i in range(count)]
    return events


def _checked(name: DocumentNames, doc: dict) -> list[tuple[str, dict]]:
    normalizer = EnvelopeCheckingNormalizer()
    passed: list[tuple[str, dict]] = []
    normalizer.subscribe(lambda n, d: passed.append((n, d)))
    normalizer.emit(name, doc)
    return passed


@pytest.mark.parametrize("broken", [
    {"seq_num": "one"}, {"uid": None}, {"time": "now"}, {"data": [1, 2]},
    {"timestamps": 5}, {"unexpected": 1}])
def test_a_broken_event_is_refused_as_the_full_check_refuses_it(broken):
    (event,) = _events(1)
    bad = {**event, **broken}
    with pytest.raises(jsonschema.ValidationError):
        schema_validators[DocumentNames.event].validate(bad)
    with pytest.raises(jsonschema.ValidationError):
        _checked(DocumentNames.event, bad)


@pytest.mark.parametrize("missing", ["descriptor", "seq_num", "uid", "data", "time"])
def test_an_event_missing_a_required_key_is_refused(missing):
    (event,) = _events(1)
    with pytest.raises(jsonschema.ValidationError):
        _checked(DocumentNames.event, {k: v for k, v in event.items() if k != missing})


def _least_seconds(checks: list, events: list[dict], rounds: int = 7) -> list[float]:
    """The least timing of each check over every event, the checks taken in turn each round
    (so that load from other tests falls on all of them alike)."""
    best = [float("inf")] * len(checks)
    for _ in range(rounds):
        for index, check in enumerate(checks):
            started = time.perf_counter()
            for event in events:
                check(event)
            best[index] = min(best[index], time.perf_counter() - started)
    return best


def test_a_good_event_passes_whole_and_costs_a_fraction_of_the_full_check():
    events = _events(40)
    passed = [doc for event in events for _, doc in _checked(DocumentNames.event, event)]
    assert passed == events  # the same objects, values untouched
    normalizer = EnvelopeCheckingNormalizer()
    full, envelope = _least_seconds(
        [schema_validators[DocumentNames.event].validate,
         lambda event: normalizer.emit(DocumentNames.event, event)], events)
    print(f"40 events of 64 px: full check {full * 1e3:.0f} ms, envelope {envelope * 1e3:.0f} ms")
    assert envelope < full / 1.5
