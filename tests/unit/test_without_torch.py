"""The control side runs without the ML extra: with torch and gymnasium unimportable, the
devices, plans (the assessment plan and the assessor's callback among them), storage and
autonomy packages import and a plan runs in a real RunEngine."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import importlib.abc, sys

    class NoML(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "gymnasium"):
                raise ImportError(f"{name} is blocked for this test")
            return None

    sys.meta_path.insert(0, NoML())

    from bluesky import RunEngine

    import spm_bluesky.autonomy.rules, spm_bluesky.autonomy.faults, spm_bluesky.storage
    import spm_bluesky.plans.assess, spm_bluesky.ml.assessor.callback
    from spm_bluesky.plans import acquire_image
    from tests.unit.test_plans_mock import make_stm

    RE = RunEngine()
    stm, _controller = make_stm(RE)
    docs = []
    RE(acquire_image(stm, 0.0, 0.0, size=10e-9, pixels=16),
                lambda name, doc: docs.append(name))
    assert docs.count("event") >= 1, docs
    assert not any(m.split(".")[0] in ("torch", "gymnasium") for m in sys.modules)
    print("ran without torch")
""")


def test_a_plan_runs_with_torch_and_gymnasium_blocked() -> None:
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                            timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ran without torch" in result.stdout
