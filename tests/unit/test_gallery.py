"""The gallery command renders every tip class and each action's before/after."""

from __future__ import annotations

import numpy as np

from spm_bluesky.commandline.main import main
from spm_bluesky.evaluation.gallery import gallery_images
from spm_bluesky.twin import TipClass


def test_gallery_panels_show_each_class_and_the_action_damage():
    panels = dict(gallery_images(seed=0))
    for tip_class in TipClass:
        assert panels[tip_class.value].shape == (64, 64)
    for action in ("pulse -4 V", "dip 2.5 nm"):
        change = panels[f"after {action}"] - panels[f"before {action}"]
        centre = np.abs(change[26:38, 26:38]).max()
        assert centre > 0.5e-10, f"{action} left no visible mark"


def test_gallery_command_writes_a_png(tmp_path, capsys):
    out = tmp_path / "gallery.png"
    assert main(["gallery", "--out", str(out), "--seed", "1"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 50_000
    assert "gallery.png" in capsys.readouterr().out
