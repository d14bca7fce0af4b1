"""The stored data model is named once: in ``spm_bluesky/schema.py``.

A string literal in the package (or the IPython profile) that spells a data key, a stream
or a session start-document key is a second definition of the data model: a rename in
``schema.py`` would leave it behind, and readers would silently miss the field. The check
reads every ``.py`` file's syntax tree and looks at its string constants, f-string parts
included; docstrings and comments are prose and are not checked.

What counts as a spelling:

- a data key (``decision-verdict``), or its spelling as a column name with ``_`` for ``-``
  (``decision_verdict``), exactly;
- any string containing a data-key prefix (``"stm-scan-"``, ``"decision-"`` ...): that
  catches keys built in f-strings (``f"assessment-p_{c}"``) and keys quoted in help text;
- a stream name (``"truth"``) or a start-document key of a session (``"session_uid"``),
  exactly, except in the packages below Channel Access, which never see a document.

Device and signal names (``stm.scan.image``, ``soft_signal_rw`` attributes in ``plans/``)
are not spellings: ophyd-async derives the data keys from them, and ``schema`` says which
device names the keys assume. A few literals equal a stream name by coincidence and mean
something else; :data:`COINCIDENCES` lists them with the reason.
"""

from __future__ import annotations

import ast
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from spm_bluesky import schema

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "spm_bluesky" / "schema.py"
CHECKED_TREES = (ROOT / "spm_bluesky", ROOT / "profile_collection" / "startup")

#: Every data key schema names (hyphenated ``<device>-...`` strings).
DATA_KEYS = frozenset(
    value for name, value in vars(schema).items()
    if name.isupper() and isinstance(value, str) and value.startswith(
        (schema.STM_DEVICE + "-", schema.ASSESSMENT_DEVICE + "-",
         schema.DECISION_DEVICE + "-", schema.FAULT_DEVICE + "-")))
#: Substrings no string outside schema may contain.
KEY_PREFIXES = frozenset(
    "-".join(key.split("-")[:-1]) + "-" for key in DATA_KEYS)
#: Exact literals checked everywhere: data keys and their column spelling.
KEYS = DATA_KEYS | {key.replace("-", "_") for key in DATA_KEYS}
#: Exact literals checked where documents are made or read: streams, session start keys.
WORDS = set(schema.STREAMS) | {schema.SESSION_UID, schema.PLAN_NAME, schema.MODEL_IDS,
                               schema.TWIN_SEED, schema.AUTONOMY, schema.AUTONOMY_RUN}
#: Packages below Channel Access: they never see a document, so a word there is a word
#: (the twin's tip ``fault``, a Nanonis command's ``action`` field).
NO_DOCUMENTS = ("spm_bluesky/twin/", "spm_bluesky/ioc/", "spm_bluesky/nanonis/",
                "spm_bluesky/domain/")

#: (file relative to the repository, literal) -> how often it may appear, and why.
COINCIDENCES: dict[tuple[str, str], int] = {
    # The DQN replay buffer's batch field "action" (the action index), not the stream.
    ("spm_bluesky/ml/agent/dqn.py", "action"): 2,
    # tip_action's plan_args key is its parameter's name (bluesky's plan_args convention).
    ("spm_bluesky/plans/action.py", "action"): 1,
    # The folder of a session's area-mask file in the data directory.
    ("spm_bluesky/commandline/run.py", "autonomy"): 1,
    # SessionState.summary(): the plan's return value and the CLI's last line, not a document.
    ("spm_bluesky/autonomy/rules.py", "session_uid"): 1,
}


class Spelling(NamedTuple):
    """A literal of the data model outside schema.py."""

    path: str
    line: int
    literal: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.literal!r}"


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the string constants that are docstrings (module, class, function)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
        # Attribute docstrings (a bare string after an assignment) are prose too.
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            found.add(id(node.value))
    return found


def spellings(source: str, path: str) -> Iterator[Spelling]:
    """The data-model literals spelled in ``source`` (the text of the file ``path``)."""
    tree = ast.parse(source)
    prose = _docstrings(tree)
    words = set() if path.startswith(NO_DOCUMENTS) else WORDS
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
            continue
        if id(node) in prose:
            continue
        text = node.value
        if text in KEYS or text in words or any(prefix in text for prefix in KEY_PREFIXES):
            yield Spelling(path, node.lineno, text)


def outside_schema(files: Iterable[Path]) -> list[Spelling]:
    """Every spelling in ``files`` but schema.py, less the listed coincidences."""
    found: list[Spelling] = []
    for file in files:
        if file.resolve() == SCHEMA:
            continue
        path = file.resolve().relative_to(ROOT).as_posix() if file.resolve().is_relative_to(
            ROOT) else str(file)
        found += spellings(file.read_text(), path)
    allowed = Counter({key: n for key, n in COINCIDENCES.items()})
    counted = Counter((s.path, s.literal) for s in found)
    return [s for s in found if counted[(s.path, s.literal)] > allowed[(s.path, s.literal)]]


def package_files() -> list[Path]:
    """Every .py file of the package and the IPython profile's startup directory."""
    return sorted(f for tree in CHECKED_TREES for f in tree.rglob("*.py"))


def test_the_schema_names_what_the_readers_read() -> None:
    """The names a reader must agree on are in schema, spelled as the plans write them."""
    assert schema.DECISION_VERDICT == "decision-verdict"
    assert schema.SCAN_IMAGE == "stm-scan-image"
    assert schema.SIM_TIP_STATE == "stm-sim-tip_state"
    assert schema.assessment_p("blunt") == "assessment-p_blunt"
    assert schema.SCAN_CLOCK in schema.CLOCK_KEYS
    assert set(schema.STREAMS) >= {"primary", "assessment", "decision", "action", "fault",
                                   "truth"}
    assert len(DATA_KEYS) > 40


def test_no_data_model_name_is_spelled_outside_schema() -> None:
    found = outside_schema(package_files())
    assert not found, ("spelled outside spm_bluesky/schema.py (use its names):\n"
                       + "\n".join(map(str, found)))


@pytest.mark.parametrize("line", [
    'VERDICT = "decision-verdict"',
    'column = "decision_verdict"',
    'key = f"assessment-p_{name}"',
    'yield from bps.trigger_and_read([sim], name="truth")',
    'start.get("session_uid")',
    'print("try run[\'primary\'][\'stm-scan-image\']")',
])
def test_the_check_catches_a_planted_literal(tmp_path: Path, line: str) -> None:
    planted = tmp_path / "planted.py"
    planted.write_text(f'"""A module docstring may say decision-verdict."""\n\n{line}\n')
    assert [s.line for s in outside_schema([planted])] == [3]


def test_the_check_ignores_docstrings_and_names_from_schema(tmp_path: Path) -> None:
    clean = tmp_path / "clean.py"
    clean.write_text('"""Reads ``decision-verdict`` from the ``decision`` stream."""\n'
                     "from spm_bluesky import schema\n\n"
                     "def verdict(data):\n"
                     '    """The ``decision-verdict`` of an event."""\n'
                     "    return data[schema.DECISION_VERDICT]\n")
    assert outside_schema([clean]) == []


def test_below_channel_access_words_are_words_but_keys_are_keys() -> None:
    source = 'kind = "fault"\nkey = "decision-verdict"\n'
    assert [s.literal for s in spellings(source, "spm_bluesky/twin/tip.py")] == [
        "decision-verdict"]
    assert [s.literal for s in spellings(source, "spm_bluesky/plans/x.py")] == [
        "fault", "decision-verdict"]
