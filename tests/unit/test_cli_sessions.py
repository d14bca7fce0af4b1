"""Sessions named by a unique prefix of their uid (like git's short hashes), and the one
place the Tiled API key is looked up."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from tiled.queries import Eq, Like

from spm_bluesky.commandline import main as cli
from spm_bluesky.commandline import report as report_cli
from spm_bluesky.commandline._catalog import Catalog, SessionLookupError, resolve_session
from spm_bluesky.services.credentials import CredentialsError, tiled_api_key

UIDS = ["4f1c2a9b", "4f1d0e77", "a0b1c2d3", "beef0001"]


class Runs:
    """The part of a Tiled catalog that session lookups use, over runs' session uids."""

    def __init__(self, uids: list[str]) -> None:
        self.uids = uids

    def search(self, query: Eq | Like) -> Runs:
        if isinstance(query, Eq):
            return Runs([uid for uid in self.uids if uid == query.value])
        prefix = query.pattern.removesuffix("%").lower()
        return Runs([uid for uid in self.uids if uid.lower().startswith(prefix)])

    def __len__(self) -> int:
        return len(self.uids)

    def distinct(self, key: str, counts: bool = False) -> dict:
        return {"metadata": {key: [{"value": uid, "count": None}
                                   for uid in dict.fromkeys(self.uids)]}}


CATALOG = Catalog(Runs(UIDS * 3), "the Tiled data in /data/tiled", " --data-dir /data")


@pytest.mark.parametrize(("text", "uid"), [("a0b1c2d3", "a0b1c2d3"), ("a0", "a0b1c2d3"),
                                           ("4f1d", "4f1d0e77"), ("b", "beef0001")])
def test_a_uid_or_a_unique_prefix_names_the_session(text, uid):
    assert resolve_session(CATALOG, text) == uid


def test_an_ambiguous_prefix_is_refused_with_the_candidates():
    with pytest.raises(SessionLookupError) as refused:
        resolve_session(CATALOG, "4f1")
    message = str(refused.value)
    assert "ambiguous" in message and "4f1c2a9b, 4f1d0e77" in message


@pytest.mark.parametrize("text", ["deadbeef", "", "4f%", "_f1"])
def test_no_match_says_where_it_looked_and_how_to_list(text):
    with pytest.raises(SessionLookupError) as refused:
        resolve_session(CATALOG, text)
    message = str(refused.value)
    assert "the Tiled data in /data/tiled" in message
    assert "spm-bluesky report --list --data-dir /data" in message


def test_report_of_an_unknown_session_is_one_line_without_a_server_address(
        capsys, monkeypatch, tmp_path):
    """The embedded server is gone once the command ends: the message names the data."""
    @contextlib.contextmanager
    def embedded(data_dir, uri=None, key_file=None):
        yield Catalog(Runs(UIDS), f"the Tiled data in {data_dir}/tiled",
                      f" --data-dir {data_dir}")

    monkeypatch.setattr(report_cli, "open_catalog", embedded)
    assert cli.main(["report", "deadbeef", "--data-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "no session 'deadbeef'" in err and "http" not in err and "--list" in err
    assert cli.main(["report", "4f1", "--data-dir", str(tmp_path)]) == 1
    assert "4f1c2a9b, 4f1d0e77" in capsys.readouterr().err


def test_api_key_from_a_file_the_environment_or_the_state_file(tmp_path, monkeypatch):
    from tests.unit.test_cli_errors import state_with_dead_ioc

    state = state_with_dead_ioc(tmp_path / "data")
    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    key_file.chmod(0o600)
    environ = {"SPM_TILED_API_KEY": "spm", "TILED_API_KEY": "tiled"}
    assert tiled_api_key(key_file=key_file, environ=environ) == "from-file"
    assert tiled_api_key(environ=environ, data_dir=Path(state.data_dir)) == "spm"
    assert tiled_api_key(environ={"TILED_API_KEY": "tiled"}) == "tiled"
    assert tiled_api_key(environ={}, data_dir=Path(state.data_dir)) == "secret"
    assert tiled_api_key(environ={}, data_dir=Path(state.data_dir),
                         uri=state.tiled_uri) == "secret"
    # The key of `up`'s server is never sent to another one.
    assert tiled_api_key(environ={}, data_dir=Path(state.data_dir),
                         uri="http://127.0.0.1:9") is None
    assert tiled_api_key(environ={}) is None
    with pytest.raises(CredentialsError, match="cannot read"):
        tiled_api_key(key_file=tmp_path / "none", environ={})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(CredentialsError, match="is empty"):
        tiled_api_key(key_file=tmp_path / "empty", environ={})
