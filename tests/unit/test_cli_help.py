"""Every ``spm-bluesky`` command answers ``--help``, with text meant for users."""

from __future__ import annotations

import re

import pytest

from spm_bluesky.commandline.main import main

COMMANDS = [[], ["up"], ["down"], ["status"], ["shell"], ["run"], ["report"], ["replay"],
            ["import"], ["export"], ["demo"], ["console"], ["gallery"], ["train"],
            ["train", "assessor"], ["train", "agent"],
            ["eval"], ["eval", "assessor"], ["eval", "agent"], ["eval", "session"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "spm-bluesky")
def test_help_works_and_reads_cleanly(command, capsys):
    assert main([*command, "--help"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"Usage: spm-bluesky {' '.join(command)}".rstrip())
    assert err == ""
    assert "%%" not in out
    assert not re.search(r"\bissues? \d", out, re.I), out


def test_every_command_is_listed_and_has_a_help_test(capsys):
    assert main(["--help"]) == 0
    listed = re.findall(r"^  (\S+)\s", capsys.readouterr().out.split("Commands:")[1], re.M)
    assert sorted(listed) == sorted({c[0] for c in COMMANDS if c})


def test_percent_signs_render_once(capsys):
    assert main(["eval", "agent", "--help"]) == 0
    assert "95 % CI" in capsys.readouterr().out


def test_a_group_without_its_command_shows_its_help(capsys):
    assert main(["train"]) == 2
    out, err = capsys.readouterr()
    assert "assessor" in out and "agent" in out and err == ""
