"""Labelling in the console, for real: a twin session from ``spm-bluesky up`` and ``run``, the
console served over its Tiled server, a person's keys in headless Chromium, the labels read
back from Tiled; bad label requests refused with nothing stored."""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from spm_bluesky import schema
from spm_bluesky.storage import SessionReader, connect, read_labels, runs_of_plan
from tests.console_helpers import (
    HTTP_TIMEOUT_S,
    chromium_missing,
    console_running,
    screenshot,
    signed_in_page,
)
from tests.session_helpers import kill_leftovers, read_state, spm

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(chromium_missing() is not None,
                                 reason=chromium_missing() or "")]



IMAGES = 16
#: What the person presses, one key per image, and the classes those keys mean.
KEYS = ["g", "2", "b", "a", "x"]
CLASSES = ["good", "multi_apex", "blunt", "adsorbate", "unclear"]


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A finished twin session of IMAGES images in the services of ``up``."""
    data_dir = tmp_path_factory.mktemp("labels") / "spm-data"
    up = spm("up", "--no-console", "--data-dir", data_dir)  # the test serves its own
    assert up.returncode == 0, up.stderr
    try:
        ran = spm("run", "--images", IMAGES, "--policy", "heuristic", "--run-images", 8,
                  "--data-dir", data_dir, timeout=300)
        assert ran.returncode == 0, ran.stdout + ran.stderr
        uid = re.search(r"^session ([0-9a-f]{32})", ran.stdout, re.M).group(1)
        state = read_state(data_dir)
        yield {**state, "uid": uid, "data_dir": data_dir,
               "client": connect(state["tiled_uri"], state["api_key"])}
    finally:
        spm("down", "--data-dir", data_dir)
        kill_leftovers(data_dir.parent)


@pytest.fixture(scope="module")
def console(session: dict[str, Any]) -> Iterator[Any]:
    with console_running(session["tiled_uri"], session["api_key"],
                         session["data_dir"]) as running:
        yield running


def stored_assessments(client: Any, uid: str) -> dict[tuple[str, int], Any]:
    """The assessor's stored judgement of every image of the session."""
    return {(a.run_uid, a.seq_num): a for run in SessionReader(client, uid)
            for a in run.assessments()}


def label_runs(client: Any, uid: str) -> int:
    return len(runs_of_plan(client, schema.LABEL_IMAGES, uid))


def test_keys_label_five_images_and_the_labels_are_in_tiled(session, console):
    client, uid = session["client"], session["uid"]
    # The console reads a session newest runs first, and lists it whole once it has all.
    deadline = time.monotonic() + HTTP_TIMEOUT_S
    while True:
        listed = console.http().get(f"api/sessions/{uid}/labels")
        assert listed.status_code == 200, listed.text
        if listed.json()["complete"] or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    images = listed.json()["items"]
    assert listed.json()["total"] == len(images) >= IMAGES and listed.json()["labelled"] == 0

    with signed_in_page(console.url, console.config.api_key, "ada") as page:
        page.goto(f"{console.url}sessions/{uid}/label")
        page.fill("#who", "ada")
        page.press("#who", "Enter")
        page.wait_for_function("document.getElementById('image').naturalWidth > 0")
        screenshot(page, "label-before")
        shown = []
        for key in [*KEYS, "m"]:  # the sixth label is undone before it is saved
            shown.append((page.get_attribute("#image", "data-run"),
                          int(page.get_attribute("#image", "data-seq"))))
            page.keyboard.press(key)
        page.keyboard.press("z")
        assert page.text_content("#person") == "not labelled yet"
        page.wait_for_function(
            "document.getElementById('saving').textContent.startsWith('saved')", timeout=20000)
        assert page.text_content("#progress") == f"5 of {len(images)} labelled"
        screenshot(page, "label-after")

        # Stored in Tiled: who, when, the class of each key, the verdict each answers.
        labels = {(label.run_uid, label.seq_num): label for label in read_labels(client, uid)}
        expected = shown[:5]
        assert expected == [(i["run_uid"], i["seq_num"]) for i in images[:5]]
        assert sorted(labels) == sorted(expected)
        judged = stored_assessments(client, uid)
        for image, cls in zip(expected, CLASSES, strict=True):
            label = labels[image]
            assert (label.label, label.who) == (cls, "ada")
            assert time.time() - 300 < label.when <= time.time()
            assert (label.model_id, label.model_label) == (judged[image].model_id,
                                                          judged[image].label)
            assert label.p_good == pytest.approx(judged[image].p_good)
        assert label_runs(client, uid) == 1  # five keys, one batch, one stored run

        # Disagreements first: the labels that differ from the assessor's class lead.
        page.select_option("#order", "disagreements")
        page.wait_for_function("document.getElementById('person').dataset.label !== undefined")
        differ = [image for image, cls in zip(expected, CLASSES, strict=True)
                  if cls != "unclear" and cls != judged[image].label]
        ordered = console.http().get(f"api/sessions/{uid}/labels?order=disagreements").json()
        assert ordered["disagreements"] == len(differ) and ordered["labelled"] == 5
        assert [(i["run_uid"], i["seq_num"]) for i in ordered["items"][:len(differ)]] == differ
        if differ:
            page.wait_for_function(
                "document.getElementById('person').classList.contains('disagrees')")
            assert "the assessor disagrees" in page.text_content("#person")
        screenshot(page, "label-disagreements")

    # The labels made with the keys are what `train assessor --from-tiled` fine-tunes from.
    out = session["data_dir"].parent / "from-console.pt"
    tuned = spm("train", "assessor", "--from-tiled", "--session", uid, "--seed", 1,
                "--out", out, "--data-dir", session["data_dir"], timeout=600)
    assert tuned.returncode == 0, tuned.stdout + tuned.stderr
    card = json.loads(out.with_suffix(".card.json").read_text())
    assert card["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert card["data"]["sessions"] == [uid]
    assert sorted(card["data"]["label_runs"]) == sorted(runs_of_plan(client, schema.LABEL_IMAGES,
                                                                      uid))
    used = sum(card["data"]["train_counts"].values()) + sum(
        card["data"]["held_out_counts"].values())
    assert used == 4  # the five labels but the unclear one


def test_bad_label_requests_are_refused_and_change_nothing(session, console):
    client, uid = session["client"], session["uid"]
    run_uid, seq = next((a.run_uid, a.seq_num) for a in stored_assessments(client, uid).values())
    before = (label_runs(client, uid), read_labels(client, uid))
    good = {"run_uid": run_uid, "seq_num": seq, "label": "blunt"}

    def post(body: Any, session_uid: str = uid) -> httpx.Response:
        return console.http().post(f"api/sessions/{session_uid}/labels", json=body)

    refused = [
        (post({"who": "eve", "labels": [good]}, "nosuchsession"), 404, "nosuchsession"),
        (post({"who": "eve", "labels": [good, {**good, "run_uid": "nosuchrun"}]}), 404,
         "in run nosuchrun"),
        (post({"who": "eve", "labels": [good, {**good, "seq_num": 9999}]}), 404,
         "no image 9999"),
        (post({"who": "eve", "labels": [good, {**good, "label": "sharp"}]}), 400,
         "unknown label class 'sharp'"),
        (post({"who": "eve", "labels": []}), 400, "a list of 1 to"),
        (post({"who": "<script>", "labels": [good]}), 400, "who is 1 to 40"),
        (post(["not", "an", "object"]), 400, "JSON object"),
        (post({"who": "eve", "labels": [{**good, "seq_num": "3"}]}), 400,
         "is not an event number"),
    ]
    for response, status, message in refused:
        assert response.status_code == status, response.text
        assert message in response.json()["detail"], response.json()
    not_json = console.http().post(f"api/sessions/{uid}/labels", content=b"{",
                                  headers={"Content-Type": "application/json"})
    assert not_json.status_code == 400 and "not JSON" in not_json.json()["detail"]
    without_key = console.http(key=False).post(f"api/sessions/{uid}/labels",
                                                json={"who": "eve", "labels": [good]})
    assert without_key.status_code == 401
    assert (label_runs(client, uid), read_labels(client, uid)) == before

    stored = post({"who": "eve", "labels": [good]})
    assert stored.status_code == 201, stored.text
    assert label_runs(client, uid) == before[0] + 1


def test_the_page_without_the_key_signs_in_first(console, session):
    answer = console.http(key=False).get(f"sessions/{session['uid']}/label",
                                          headers={"Accept": "text/html"})
    assert answer.status_code == 401 and "API key" in answer.text
