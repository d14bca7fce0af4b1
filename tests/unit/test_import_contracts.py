"""The import-linter contracts in pyproject.toml hold, and each one can fail.

Each case copies the package into a temporary folder, plants one import that breaks one
rule, and runs ``lint-imports`` on the copy: exactly that contract must be reported broken.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

#: contract id -> (module file to change, the import that breaks only that contract)
PLANTED = {
    "layers": ("domain/limits.py", "import spm_bluesky.protocols"),
    "control-side-sees-pvs-only": ("plans/acquire.py", "import spm_bluesky.twin"),
    "torch-only-in-ml": ("report/__init__.py", "import torch"),
    "control-side-without-torch": ("plans/acquire.py", "import spm_bluesky.ml.assessor.assessor"),
    "twin-is-pure": ("twin/config.py", "import bluesky"),
}


def contracts() -> dict[str, str]:
    """Contract id -> its name, as pyproject.toml declares them."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    return {c["id"]: c["name"] for c in config["tool"]["importlinter"]["contracts"]}


def lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--no-logo", "pyproject.toml"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=120)


def copy_of_package(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "spm_bluesky", tmp_path / "spm_bluesky",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pt"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def broken(output: str) -> set[str]:
    """The ids of the contracts that lint-imports reported broken."""
    return {cid for cid, name in contracts().items() if f"{name} BROKEN" in output}


def test_every_contract_has_a_planted_violation() -> None:
    assert set(contracts()) == set(PLANTED)


def test_the_package_keeps_every_contract() -> None:
    result = lint(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert broken(result.stdout) == set()


@pytest.mark.parametrize("contract", sorted(PLANTED))
def test_a_planted_import_breaks_its_contract(tmp_path: Path, contract: str) -> None:
    root = copy_of_package(tmp_path)
    relative, line = PLANTED[contract]
    module = root / "spm_bluesky" / relative
    module.write_text(module.read_text() + f"\n{line}  # planted by the test\n")
    result = lint(root)
    assert result.returncode != 0
    assert broken(result.stdout) == {contract}, result.stdout
