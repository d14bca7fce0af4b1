"""The IPython profile over the Nanonis simulator, driven in a terminal as a person would:
`spm-bluesky up --backend nanonis-sim`, `spm-bluesky shell`, then `survey`, `condition_tip`
and a short `autonomous_session`, unchanged; the runs read back from Tiled, and every frame
the simulator made is an image in Tiled."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from spm_bluesky import schema
from spm_bluesky.domain import limits
from spm_bluesky.services.nanonis_sim import truth_state
from spm_bluesky.storage import connect, read_image_stream, runs_by_session
from tests.session_helpers import services_up
from tests.system.test_profile_ipython import shell

pytestmark = pytest.mark.integration

#: A survey, a conditioning episode or a short session: minutes on a loaded machine.
PLAN_TIMEOUT = 300
UID = r"Out\[\d+\]: \('([0-9a-f-]{36})',\)"


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The simulator, the Nanonis IOC and Tiled, started with `spm-bluesky up`."""
    data_dir = tmp_path_factory.mktemp("nanonis-session") / "spm-data"
    with services_up(data_dir, "--backend", "nanonis-sim", "--seed", "1") as state:
        yield state


def test_survey_condition_tip_and_a_session_in_ipython(services: dict[str, Any]) -> None:
    assert services["backend"] == "nanonis-sim"
    terminal = shell(services)
    out = terminal.type("RE(survey(stm, 2))", PLAN_TIMEOUT)
    survey_uid = re.search(UID, out).group(1)

    # BestEffortCallback draws a figure per stream (assessment, action, decision ...): on a
    # loaded 2-core machine that takes minutes per conditioning step, so no plots from here.
    terminal.type("bec.disable_plots()")
    # condition_tip takes its policy and assessor as objects: from the registries. A
    # threshold no image reaches makes it act (twice).
    terminal.type("from spm_bluesky.plans.episode import condition_tip; "
                  "from spm_bluesky.ml.agent.policies import policy_by_name; "
                  "from spm_bluesky.ml.assessor.assessor import assessor_by_name")
    out = terminal.type("RE(condition_tip(stm, policy_by_name('heuristic'), "
                        "assessor_by_name('shipped'), max_actions=2, "
                        "good_threshold=0.999999))", PLAN_TIMEOUT)
    episode_uid = re.search(UID, out).group(1)

    out = terminal.type("RE(autonomous_session(stm, policy='heuristic', images=4, "
                        "session_uid='nanonis-profile'))", PLAN_TIMEOUT)
    assert "Traceback" not in out, out

    # The tunnelling current, served from the simulator's Current.Get.
    terminal.type("from bluesky.run_engine import call_in_bluesky_event_loop as loop")
    out = terminal.type("print('CUR' + 'RENT', loop(stm.status.current.get_value()), "
                        "loop(stm.status.contact.get_value()))")
    found = re.search(r"CURRENT (\S+) (\d)", out)
    assert found, out
    assert terminal.exit() == 0

    client = connect(services["tiled_uri"], services["api_key"])
    survey = client[survey_uid]
    assert survey.metadata["start"]["plan_name"] == "survey"
    assert read_image_stream(survey).images.shape == (2, 64, 64)
    episode = client[episode_uid]
    assert episode.metadata["start"]["plan_name"] == "condition_tip"
    assert len(read_image_stream(episode).images) == 3  # the first image, then one per action
    assert episode.metadata["stop"]["num_events"][schema.ACTION] == 2
    session = list(runs_by_session(client, "nanonis-profile").values())
    session_images = sum(len(read_image_stream(run).images) for run in session)
    assert session_images >= 4

    # Every frame the simulator made is an image in Tiled, and nothing more.
    truth = truth_state(services["sim_ports"][1])
    assert truth is not None
    assert truth["frame_count"] == 2 + 3 + session_images
    current, contact = float(found.group(1)), int(found.group(2))
    assert contact == int(truth["contact"])
    if contact:  # the feedback holds the current at the setpoint
        assert limits.SCAN_SETPOINT.low <= current <= limits.SCAN_SETPOINT.high
    else:
        assert current == 0.0
