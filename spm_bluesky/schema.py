"""The stored data model: every run type, stream, data key and start-document key, once.

What the plans write and what every reader (resume, the report, the live tally, the
re-assessment, the agent's learning from stored runs) reads back is named here and nowhere
else; ``tests/unit/test_schema.py`` fails on a name spelled outside this module.

One Bluesky run per activity
    An image acquisition, one conditioning episode (:data:`CONDITION_TIP`), a batch of the
    autonomous loop's images (:data:`AUTONOMOUS_SCAN`), an approach, a withdrawal or an
    approach-area move. Every run of an autonomous session carries the same
    :data:`SESSION_UID` in its start document, so a session is a search over start documents
    (:data:`SESSION_UID_QUERY`).

Streams
    :data:`PRIMARY` holds the frames (or, in coarse runs, the instrument status);
    :data:`ASSESSMENT` the assessor's judgement of each frame; :data:`DECISION` the loop's
    verdict on each frame and the counters after it; :data:`ACTION` each conditioning step
    (the action, where, the mask and the policy's values); :data:`FAULT` a fault a
    suspender handled; :data:`TRUTH` the twin's true tip class (labels only, never used for
    a decision). Event *k* of every stream of a run belongs to frame *k* (``seq_num``).

Data keys
    ophyd-async names a reading ``<device>-<part>-<signal>``: the keys below assume the
    devices are named :data:`STM_DEVICE`, :data:`ASSESSMENT_DEVICE`, :data:`DECISION_DEVICE`
    and :data:`FAULT_DEVICE` (the profile, the plans and the evaluation name them so). A
    table read back from Tiled has one column per data key, with the same spelling.

Start-document keys
    Every run: :data:`PLAN_NAME`, :data:`PLAN_ARGS`, :data:`INSTRUMENT`, and with a session
    :data:`SESSION_UID`; with the twin :data:`TWIN_SEED` and :data:`SAMPLE`. Runs of the
    autonomous loop add :data:`REASON`, :data:`MODEL_IDS`, :data:`AUTONOMY` (the session's
    configuration, ``SessionConfig.as_md()``) and :data:`AUTONOMY_RUN`. Runs of imported files
    (:data:`IMPORT_FILES`) list each event's :data:`SOURCE_PATH`, :data:`SOURCE_SHA256`,
    :data:`SCAN_METADATA` and :data:`HEADER`.
"""

from __future__ import annotations

from typing import Final

# -- run types (``plan_name``) -------------------------------------------------------------

#: A batch of the autonomous loop's frames, each assessed and decided.
AUTONOMOUS_SCAN: Final = "autonomous_scan"
#: One conditioning episode: images, assessments and one ``action`` event per step.
CONDITION_TIP: Final = "condition_tip"
#: Coarse motion: approach the surface, withdraw from it, move to a fresh approach area.
APPROACH: Final = "approach"
WITHDRAW: Final = "withdraw"
MOVE_AREA: Final = "move_area"
#: Manual runs: one image, a grid of images, one tip action, the assessment of the last frame.
ACQUIRE_IMAGE: Final = "acquire_image"
SURVEY: Final = "survey"
TIP_ACTION: Final = "tip_action"
ASSESS_LAST_IMAGE: Final = "assess_last_image"
#: STM image files (Nanonis ``.sxm``, Createc ``.dat``, Gwyddion ``.gwy``) brought in by
#: ``spm-bluesky import``: one ``primary`` event per file with the frame's keys and the
#: file's other images under :func:`scan_channel` keys; the files themselves, in event
#: order, in the start document (:data:`SOURCE_PATH`, :data:`SOURCE_SHA256`,
#: :data:`SCAN_METADATA`, :data:`HEADER`: one list entry per event).
IMPORT_FILES: Final = "import_files"

#: Runs whose ``primary`` stream holds scanned frames, assessed and (in scan runs) decided.
IMAGE_PLANS: Final = frozenset({AUTONOMOUS_SCAN, CONDITION_TIP, IMPORT_FILES})
#: Runs whose ``primary`` stream holds only the instrument status before and after.
COARSE_PLANS: Final = frozenset({APPROACH, WITHDRAW, MOVE_AREA})

# -- streams --------------------------------------------------------------------------------

PRIMARY: Final = "primary"
ASSESSMENT: Final = "assessment"
DECISION: Final = "decision"
ACTION: Final = "action"
FAULT: Final = "fault"
TRUTH: Final = "truth"
STREAMS: Final = (PRIMARY, ASSESSMENT, DECISION, ACTION, FAULT, TRUTH)

# -- device names (the first part of every data key) ----------------------------------------

#: The microscope (:class:`~spm_bluesky.devices.stm.STM`).
STM_DEVICE: Final = "stm"
#: The soft device holding the assessor's answer, read into :data:`ASSESSMENT`.
ASSESSMENT_DEVICE: Final = "assessment"
#: The soft device of the loop's decisions: a frame's verdict (read into :data:`DECISION`)
#: and a conditioning step (read into :data:`ACTION`).
DECISION_DEVICE: Final = "decision"
#: The soft device of a fault a suspender handled, read into :data:`FAULT`.
FAULT_DEVICE: Final = "fault"


def data_key(*names: str) -> str:
    """The data key of a signal: its device path joined by ``-`` (ophyd-async's naming)."""
    return "-".join(names)


# -- data keys: the frame (``primary`` of image runs) ----------------------------------------

SCAN_IMAGE: Final = data_key(STM_DEVICE, "scan", "image")
SCAN_CENTER_X: Final = data_key(STM_DEVICE, "scan", "center_x")
SCAN_CENTER_Y: Final = data_key(STM_DEVICE, "scan", "center_y")
SCAN_SIZE: Final = data_key(STM_DEVICE, "scan", "size")
SCAN_PIXELS: Final = data_key(STM_DEVICE, "scan", "pixels")
SCAN_AREA_INDEX: Final = data_key(STM_DEVICE, "scan", "area_index")
SCAN_FRAME_COUNTER: Final = data_key(STM_DEVICE, "scan", "frame_counter")
#: A frame's instrument clock (s).
SCAN_CLOCK: Final = data_key(STM_DEVICE, "scan", "clock")
#: Configuration of the scan detector (in the descriptor, not in events).
SCAN_BIAS: Final = data_key(STM_DEVICE, "scan", "bias")
SCAN_SETPOINT: Final = data_key(STM_DEVICE, "scan", "setpoint")
SCAN_SPEED: Final = data_key(STM_DEVICE, "scan", "speed")
#: An imported file's frame beyond the acquired one's keys: its height (m) and lines per
#: frame when not square, its angle (degrees, counter-clockwise). Its bias and setpoint are
#: event fields under the :data:`SCAN_BIAS` and :data:`SCAN_SETPOINT` keys (NaN when the file
#: has none), since each file of the run has its own.
SCAN_SIZE_Y: Final = data_key(STM_DEVICE, "scan", "size_y")
SCAN_LINES: Final = data_key(STM_DEVICE, "scan", "lines")
SCAN_ANGLE: Final = data_key(STM_DEVICE, "scan", "angle")
#: Prefix of an imported file's images other than Z forward (which is :data:`SCAN_IMAGE`).
SCAN_CHANNEL_PREFIX: Final = SCAN_IMAGE + "_"


def scan_channel(channel: str, direction: str) -> str:
    """The data key of an imported file's image of ``channel`` in ``direction`` other than
    Z forward: ``stm-scan-image_current_backward`` (lower case, ``_`` for anything else)."""
    slug = "".join(c if c.isalnum() else "_" for c in channel.lower()).strip("_") or "channel"
    return f"{SCAN_CHANNEL_PREFIX}{slug}_{direction}"


# -- data keys: the instrument status (``primary`` of coarse runs, ``action``) ---------------

STATUS_CONTACT: Final = data_key(STM_DEVICE, "status", "contact")
STATUS_CRASHED: Final = data_key(STM_DEVICE, "status", "crashed")
#: Crashes since the IOC started: a dip that crashed during conditioning shows only here.
STATUS_CRASH_COUNT: Final = data_key(STM_DEVICE, "status", "crash_count")
STATUS_CLOCK: Final = data_key(STM_DEVICE, "status", "clock")
STATUS_Z: Final = data_key(STM_DEVICE, "status", "z")
STATUS_XY_RANGE: Final = data_key(STM_DEVICE, "status", "xy_range")
STATUS_Z_RANGE: Final = data_key(STM_DEVICE, "status", "z_range")
STATUS_AREA_INDEX: Final = data_key(STM_DEVICE, "status", "area_index")

# -- data keys: the tip (``action``) ---------------------------------------------------------

TIP_ACTION_NAME: Final = data_key(STM_DEVICE, "tip", "action_name")
TIP_ACTION_X: Final = data_key(STM_DEVICE, "tip", "action_x")
TIP_ACTION_Y: Final = data_key(STM_DEVICE, "tip", "action_y")
TIP_PULSE_BIAS: Final = data_key(STM_DEVICE, "tip", "pulse_bias")
TIP_PULSE_TIME: Final = data_key(STM_DEVICE, "tip", "pulse_time")
TIP_DIP_DEPTH: Final = data_key(STM_DEVICE, "tip", "dip_depth")
TIP_ACTION_COUNTER: Final = data_key(STM_DEVICE, "tip", "action_counter")

# -- data keys: the twin's truth (``truth``) -------------------------------------------------

#: The twin's TRUE tip class.
SIM_TIP_STATE: Final = data_key(STM_DEVICE, "sim", "tip_state")

# -- data keys: the assessment (``assessment``) ----------------------------------------------

#: Prefix of the class probabilities: ``assessment-p_<class>``, see :func:`assessment_p`.
ASSESSMENT_P_PREFIX: Final = data_key(ASSESSMENT_DEVICE, "p_")


def assessment_p(tip_class: str) -> str:
    """The data key of the assessor's probability of ``tip_class`` (``assessment-p_good``)."""
    return ASSESSMENT_P_PREFIX + tip_class


ASSESSMENT_P_GOOD: Final = assessment_p("good")
ASSESSMENT_LABEL: Final = data_key(ASSESSMENT_DEVICE, "label")
ASSESSMENT_MODEL_ID: Final = data_key(ASSESSMENT_DEVICE, "model_id")
#: The assessor's out-of-distribution score (NaN when it has none) and whether it is over
#: the calibrated threshold: the image is then ``unsure`` (not acted on).
ASSESSMENT_UNSURE_SCORE: Final = data_key(ASSESSMENT_DEVICE, "unsure_score")
ASSESSMENT_UNSURE: Final = data_key(ASSESSMENT_DEVICE, "unsure")

# -- data keys: a frame's verdict (``decision``) ---------------------------------------------

#: One of ``autonomy.rules.Verdict`` (``kept``, ``bad``, ``debris``, ``crash``,
#: ``lost_contact``, ``unsure``).
DECISION_VERDICT: Final = data_key(DECISION_DEVICE, "verdict")
DECISION_PEAK_TO_PEAK: Final = data_key(DECISION_DEVICE, "peak_to_peak")
#: The disc the verdict blocked (m).
DECISION_BLOCK_X: Final = data_key(DECISION_DEVICE, "block_x")
DECISION_BLOCK_Y: Final = data_key(DECISION_DEVICE, "block_y")
DECISION_BLOCK_RADIUS: Final = data_key(DECISION_DEVICE, "block_radius")
DECISION_AREA_INDEX: Final = data_key(DECISION_DEVICE, "area_index")
#: The frame's instrument clock (s).
DECISION_CLOCK: Final = data_key(DECISION_DEVICE, "clock")
#: Instrument seconds since the session's start, summed over clock steps.
DECISION_ELAPSED: Final = data_key(DECISION_DEVICE, "elapsed")
#: The session's image number (1-based), and the counters after the frame.
DECISION_IMAGE: Final = data_key(DECISION_DEVICE, "image")
DECISION_GOOD_IMAGES: Final = data_key(DECISION_DEVICE, "good_images")
DECISION_CONSECUTIVE_BAD: Final = data_key(DECISION_DEVICE, "consecutive_bad")
DECISION_DEBRIS_RETRIES: Final = data_key(DECISION_DEVICE, "debris_retries")
#: P(tip good) after the frame (absent in sessions recorded before the tip filter).
DECISION_TIP_BELIEF: Final = data_key(DECISION_DEVICE, "tip_belief")

# -- data keys: a conditioning step (``action``) ---------------------------------------------

STEP_INDEX: Final = data_key(DECISION_DEVICE, "step")
STEP_ACTION: Final = data_key(DECISION_DEVICE, "action")
STEP_ACTION_INDEX: Final = data_key(DECISION_DEVICE, "action_index")
STEP_KIND: Final = data_key(DECISION_DEVICE, "kind")
STEP_BIAS: Final = data_key(DECISION_DEVICE, "bias")
STEP_DURATION: Final = data_key(DECISION_DEVICE, "duration")
STEP_DEPTH: Final = data_key(DECISION_DEVICE, "depth")
STEP_SPOT_X: Final = data_key(DECISION_DEVICE, "spot_x")
STEP_SPOT_Y: Final = data_key(DECISION_DEVICE, "spot_y")
STEP_FREE_SQUARE: Final = data_key(DECISION_DEVICE, "free_square")
STEP_FORBIDDEN_RADIUS: Final = data_key(DECISION_DEVICE, "forbidden_radius")
#: The action mask the step was chosen under (an array node, not a table column).
STEP_MASK: Final = data_key(DECISION_DEVICE, "mask")
#: The policy's value per action, NaN where it has none (an array node).
STEP_VALUES: Final = data_key(DECISION_DEVICE, "values")
STEP_POLICY: Final = data_key(DECISION_DEVICE, "policy")

# -- data keys: a fault a suspender handled (``fault``) ---------------------------------------

FAULT_KIND: Final = data_key(FAULT_DEVICE, "kind")
FAULT_X: Final = data_key(FAULT_DEVICE, "x")
FAULT_Y: Final = data_key(FAULT_DEVICE, "y")
FAULT_RADIUS: Final = data_key(FAULT_DEVICE, "radius")
FAULT_CLOCK: Final = data_key(FAULT_DEVICE, "clock")
FAULT_CRASH_COUNT: Final = data_key(FAULT_DEVICE, "crash_count")

#: Every data key with an instrument clock (s), whatever the stream.
CLOCK_KEYS: Final = (SCAN_CLOCK, STATUS_CLOCK, DECISION_CLOCK, FAULT_CLOCK)
#: Every data key with the instrument's crash counter.
CRASH_COUNT_KEYS: Final = (STATUS_CRASH_COUNT, FAULT_CRASH_COUNT)

# -- start-document keys ---------------------------------------------------------------------

PLAN_NAME: Final = "plan_name"
PLAN_ARGS: Final = "plan_args"
#: The session every run of an autonomous session belongs to.
SESSION_UID: Final = "session_uid"
#: ``{"name", "prefix", "simulated", "approach_area_size"}``.
INSTRUMENT: Final = "instrument"
SAMPLE: Final = "sample"
#: The twin's seed (twin only; also ``sample.twin_seed``).
TWIN_SEED: Final = "twin_seed"
#: ``{"assessor": model id, "policy": model id or policy name}``.
MODEL_IDS: Final = "model_ids"
MODEL_ASSESSOR: Final = "assessor"
MODEL_POLICY: Final = "policy"
#: Why a run of the loop was started (``scan``, ``consecutive_bad``, ``crash`` ...).
REASON: Final = "reason"
#: The session's configuration, the same dict in every run of it.
AUTONOMY: Final = "autonomy"
#: Key in :data:`AUTONOMY`: the instrument clock at the session's start (s).
AUTONOMY_START_CLOCK: Final = "start_clock"
#: This run's number in the session (0, 1, 2 ... over all run types).
AUTONOMY_RUN: Final = "autonomy_run"
#: The action a ``tip_action`` run applied: name, kind and parameters.
TIP_ACTION_DETAILS: Final = "action"
#: The area mask a ``survey`` run started from: file, area index, cell size, free cells.
AREA_MASK: Final = "area_mask"

#: The files of an ``import_files`` run, one list entry per event (event ``seq_num`` k is
#: entry k - 1): where each was read, its bytes' sha256 (how a second import of it is
#: recognised: search with ``tiled.queries.Contains(SOURCE_SHA256_QUERY, sha256)``), its
#: scan's fields (``ScanFile.scan_metadata()``, the ``channels`` each with the
#: :data:`CHANNEL_DATA_KEY` holding it, plus ``source`` and ``sha256``) and its whole header
#: as ``[key, value]`` pairs of text, in file order (header keys hold ``.`` and ``/``, which a
#: start document's keys may not).
SOURCE_PATH: Final = "source_path"
SOURCE_SHA256: Final = "source_sha256"
SCAN_METADATA: Final = "scan"
HEADER: Final = "header"
#: Key of a channel's data key in :data:`SCAN_METADATA` ``["channels"]``.
CHANNEL_DATA_KEY: Final = "data_key"

#: Search key of the runs of one session (``tiled.queries.Eq(SESSION_UID_QUERY, uid)``).
SESSION_UID_QUERY: Final = "start." + SESSION_UID
#: Search key of the runs of one type.
PLAN_NAME_QUERY: Final = "start." + PLAN_NAME
#: Sort key: start time.
START_TIME_QUERY: Final = "start.time"
#: Search key of imported files' sha256s (a list: query with ``Contains``).
SOURCE_SHA256_QUERY: Final = "start." + SOURCE_SHA256

# -- a person's labels of stored images (``label_images`` runs) -----------------------------

#: A batch of a person's labels of stored images: one :data:`LABELS` event per label, each
#: naming the image (run uid and ``seq_num`` of its ``primary`` event) and its class. The
#: start document carries the :data:`SESSION_UID` of the labelled images and :data:`WHO`.
#: Not an image run: a session's readers skip it by its plan name.
LABEL_IMAGES: Final = "label_images"
#: The stream of a :data:`LABEL_IMAGES` run (not in :data:`STREAMS`, which are the streams of
#: the microscope's runs).
LABELS: Final = "labels"
#: The device name of the label fields (the first part of their data keys).
LABEL_DEVICE: Final = "label"
#: The labelled image: its run's uid and its ``primary`` event's ``seq_num``.
LABEL_RUN_UID: Final = data_key(LABEL_DEVICE, "run_uid")
LABEL_SEQ_NUM: Final = data_key(LABEL_DEVICE, "seq_num")
#: The class given: good, multi_apex, blunt, adsorbate, unstable or unclear.
LABEL_CLASS: Final = data_key(LABEL_DEVICE, "class")
#: Who labelled it and when (unix time).
LABEL_WHO: Final = data_key(LABEL_DEVICE, "who")
LABEL_WHEN: Final = data_key(LABEL_DEVICE, "when")
#: The assessor verdict the label answers: model id and class ("" when none), p(good) (NaN).
LABEL_MODEL_ID: Final = data_key(LABEL_DEVICE, "model_id")
LABEL_MODEL_CLASS: Final = data_key(LABEL_DEVICE, "model_label")
LABEL_P_GOOD: Final = data_key(LABEL_DEVICE, "p_good")
#: Start-document key of a :data:`LABEL_IMAGES` or :data:`SESSION_CONTROL` run: the person
#: who labelled, or who asked.
WHO: Final = "who"

# -- a person's pause, resume and stop of a session (``session_control`` runs) --------------

#: One applied command of a person (from the console) to a running session: one
#: :data:`CONTROL` event. The start document carries the session's :data:`SESSION_UID` and
#: :data:`WHO`. Not an image run: a session's readers skip it by its plan name.
SESSION_CONTROL: Final = "session_control"
#: The stream of a :data:`SESSION_CONTROL` run.
CONTROL: Final = "control"
#: The device name of the control fields (the first part of their data keys).
CONTROL_DEVICE: Final = "control"
#: The command (pause, resume or stop), who asked, when they asked and when the session
#: applied it (unix times), and the request's sequence number in the session's request file.
CONTROL_COMMAND: Final = data_key(CONTROL_DEVICE, "command")
CONTROL_WHO: Final = data_key(CONTROL_DEVICE, "who")
CONTROL_REQUESTED: Final = data_key(CONTROL_DEVICE, "requested")
CONTROL_APPLIED: Final = data_key(CONTROL_DEVICE, "applied")
CONTROL_SEQ: Final = data_key(CONTROL_DEVICE, "seq")
