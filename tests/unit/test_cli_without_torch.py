"""The command line works without the ML extra: options are checked, the service commands
run, and a command that needs torch says how to get it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import contextlib, importlib.abc, io, sys

    class NoML(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "gymnasium"):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NoML())
    from spm_bluesky.commandline.main import main

    def spm(*args):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
        return code, out.getvalue(), err.getvalue()

    assert spm("--help")[0] == 0
    assert spm("run", "--hours", "abc")[0] == 2
    code, out, err = spm("status", "--data-dir", sys.argv[1])
    assert code == 1 and "no services are up" in out, (code, out, err)
    code, out, err = spm("eval", "agent", "--episodes", "1")
    assert code == 1 and len(err.splitlines()) == 1, err
    assert "spm-bluesky eval agent: needs torch" in err and "spm-bluesky[ml]" in err, err
    assert not any(m.split(".")[0] in ("torch", "gymnasium") for m in sys.modules)
    print("cli without torch")
""")


def test_the_command_line_without_torch(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "data")],
                            capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "cli without torch" in result.stdout
