"""The documentation: links resolve, named files and modules exist, no internal references.

The README and ``docs/`` are the project's user-facing text: every relative link must reach a
file (and, with ``#anchor``, a heading) of the repository, every repository path and dotted
``spm_bluesky`` name they quote must exist, and neither they nor the package's own strings
(docstrings, help texts, messages) may cite tracker numbers or files outside the repository.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
README = REPO_ROOT / "README.md"
DOCS = REPO_ROOT / "docs"
MAX_README_LINES = 250

#: Inline Markdown links and images: ``[text](target)``.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
#: A fenced code block's opening or closing line.
FENCE = re.compile(r"^\s*(```|~~~)")
#: Text that cites the tracker or the team's design card, neither of which users have.
INTERNAL = re.compile(r"\bissues?\s*#?\d+|\bDESIGN\.md\b", re.IGNORECASE)
#: Repository paths quoted in code spans: ``spm_bluesky/...``, ``tests/...`` and so on.
REPO_PATH = re.compile(
    r"`((?:spm_bluesky|tests|benchmarks|profile_collection|docs|\.ci)/[^`\s:*<>]*)")
#: Dotted names under the package quoted in code spans.
DOTTED = re.compile(r"`(spm_bluesky(?:\.[A-Za-z_][A-Za-z0-9_]*)+)")


def doc_files() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def relative(path: Path) -> str:
    return path.relative_to(REPO_ROOT).as_posix() if path.is_relative_to(REPO_ROOT) else str(path)


def prose_lines(text: str) -> Iterator[tuple[int, str]]:
    """Lines outside fenced code blocks, with their 1-based numbers."""
    fenced = False
    for number, line in enumerate(text.splitlines(), start=1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield number, line


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().replace("`", "").replace("*", "")
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file, duplicates numbered as GitHub numbers them."""
    seen: dict[str, int] = {}
    found: set[str] = set()
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        base = slug(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: Path) -> Iterator[tuple[int, str]]:
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        for match in LINK.finditer(line):
            yield number, match.group(1)


def broken_links(path: Path) -> list[str]:
    """The relative links of ``path`` that reach no file, or no heading of that file."""
    root = REPO_ROOT if path.is_relative_to(REPO_ROOT) else path.parent
    broken = []
    for number, target in links(path):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        where = f"{relative(path)}:{number}: {target}"
        if not resolved.exists():
            broken.append(f"{where} (no such file)")
        elif not resolved.is_relative_to(root):
            broken.append(f"{where} (outside the repository)")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{where} (no heading with this anchor)")
    return broken


def test_slug_follows_github() -> None:
    assert slug("`autonomous_scan`: imaging along the spiral") == (
        "autonomous_scan-imaging-along-the-spiral")
    assert slug("The belief filter: P(tip good)") == "the-belief-filter-ptip-good"
    assert slug("up, status, down") == "up-status-down"


def test_a_broken_link_is_found(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Present heading\n")
    page.write_text("[gone](missing.md) [ok](other.md#present-heading) [no](other.md#absent)\n"
                    "```\n[in code](ignored.md)\n```\n[web](https://example.org/x)\n")
    found = [entry.split(": ", 1)[1] for entry in broken_links(page)]
    assert found == ["missing.md (no such file)", "other.md#absent (no heading with this anchor)"]


@pytest.mark.parametrize("path", doc_files(), ids=relative)
def test_relative_links_resolve(path: Path) -> None:
    assert broken_links(path) == []


@pytest.mark.parametrize("path", doc_files(), ids=relative)
def test_quoted_repository_paths_exist(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    missing = sorted({quoted for quoted in REPO_PATH.findall(text)
                      if not (REPO_ROOT / quoted.split("::")[0]).exists()})
    assert missing == [], f"{relative(path)} names files the repository lacks"


def resolves(dotted: str) -> bool:
    """Whether ``dotted`` is an importable module, or an attribute reachable from one."""
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            target: object = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for name in parts[split:]:
            if not hasattr(target, name):
                return False
            target = getattr(target, name)
        return True
    return False


def test_quoted_package_names_exist() -> None:
    quoted = {name for path in doc_files()
              for name in DOTTED.findall(path.read_text(encoding="utf-8"))}
    assert quoted, "the docs name no module at all: is the pattern still right?"
    assert sorted(name for name in quoted if not resolves(name)) == []


def test_resolves_rejects_stale_names() -> None:
    assert resolves("spm_bluesky.twin.tip.dynamics_table")
    assert not resolves("spm_bluesky.autonomy_rules")
    assert not resolves("spm_bluesky.twin.tip.no_such_function")


def internal_references(paths: list[Path]) -> list[str]:
    found = []
    for path in paths:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if INTERNAL.search(line):
                found.append(f"{relative(path)}:{number}: {line.strip()}")
    return found


def test_internal_reference_pattern() -> None:
    assert INTERNAL.search("the goals of issue 4") and INTERNAL.search("see DESIGN.md")
    assert INTERNAL.search("Issue 5's goals") and INTERNAL.search("(issues #12)")
    assert not INTERNAL.search("an issue with the tip") and not INTERNAL.search("design.mdx")


def test_docs_cite_no_tracker_numbers_or_missing_design_card() -> None:
    paths = [*doc_files(), REPO_ROOT / "benchmarks" / "RESULTS.md"]
    assert internal_references(paths) == []


def test_package_text_cites_no_tracker_numbers_or_missing_design_card() -> None:
    """Docstrings, help texts, messages and comments of the package, and its model cards."""
    package = REPO_ROOT / "spm_bluesky"
    paths = sorted(p for p in package.rglob("*")
                   if p.suffix in {".py", ".md", ".json"} and p.is_file())
    assert paths
    assert internal_references(paths) == []


def test_readme_is_short() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, (
        f"README.md has {len(lines)} lines; move detail into docs/ (at most {MAX_README_LINES})")


def test_readme_test_command_is_what_ci_runs() -> None:
    ci = (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "python -m pytest -q" in ci
    assert "python -m pytest -q\n" in README.read_text(encoding="utf-8")


def test_index_lists_every_page() -> None:
    index = DOCS / "index.md"
    listed = {(DOCS / target.partition("#")[0]).resolve() for _, target in links(index)}
    pages = {path.resolve() for path in DOCS.rglob("*.md") if path != index}
    assert sorted(relative(p) for p in pages - listed) == []
