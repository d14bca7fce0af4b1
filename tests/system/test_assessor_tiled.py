"""The assessor over stored runs: a real Tiled server, a real RunEngine, the assessing callback."""

from __future__ import annotations

import pytest
from bluesky import RunEngine

from spm_bluesky.ml.assessor import load_assessor
from spm_bluesky.ml.assessor.callback import AssessingCallback
from spm_bluesky.plans import acquire_image
from spm_bluesky.storage import feed_documents, make_writer
from spm_bluesky.twin import TipClass
from tests.unit.test_assessor import mock_stm, twin_image


@pytest.fixture(scope="module")
def assessor():
    return load_assessor()


@pytest.mark.integration
def test_assessing_callback_assesses_a_stored_run(assessor, tiled_client):
    image = twin_image(11, TipClass.BLUNT, 10e-9, 128)
    RE = RunEngine(call_returns_result=True)  # first: it starts the loop the devices use
    stm = mock_stm(image, 10e-9, "blunt")
    RE.subscribe(make_writer(tiled_client))
    uid = RE(acquire_image(stm, 0.0, 0.0, size=10e-9, pixels=128)).run_start_uids[0]
    callback = AssessingCallback(assessor)
    feed_documents(tiled_client[uid], callback)
    assert len(callback.results) == 1
    result = callback.results[0]
    expected = assessor.assess(image, 10e-9)
    assert result.run_uid == uid and result.field == "stm-scan-image"
    assert result.truth == "blunt"
    assert result.assessment.probabilities == pytest.approx(expected.probabilities, abs=1e-6)
    assert result.assessment.model_id == assessor.model_id
