"""Every path the project cites must exist in the repository: a reader who follows a reference
from the code, the README or the docs finds the file. Paths under the top-level folders
(docs/, scripts/, configs/, tests/, taid_vlm/) and upper-case Markdown names (TAID.md) count;
paths under data/ (the shipped sample set) count in the README, docs/ and data/ itself (code
says ``data/x.py`` for the subpackage, and recipes name the user's own ``data/*.jsonl``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOP_LEVEL = ("docs", "scripts", "configs", "tests", "taid_vlm")
SAMPLE_SET_CITERS = ("README.md", "docs", "data")


def path_pattern(folders: tuple[str, ...]) -> re.Pattern:
    """A path starts at a top-level folder (not inside a longer path or word) and runs over path characters."""
    return re.compile(r"(?<![\w./-])((?:" + "|".join(folders) + r")/[\w./-]*)")


CITED_PATH = path_pattern(TOP_LEVEL)
CITED_PATH_OR_SAMPLE = path_pattern(TOP_LEVEL + ("data",))
CITED_MARKDOWN = re.compile(r"(?<![\w./-])([A-Z][A-Z0-9_-]*\.md)\b")


def citing_files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "pyproject.toml"]
    for folder, patterns in (("docs", ("*.md",)), ("taid_vlm", ("*.py",)), ("scripts", ("*.py", "*.sh")),
                             ("configs", ("*.yaml",)), ("tests", ("*.py",)), ("data", ("*.md", "*.py", "LICENSE"))):
        for pattern in patterns:
            files += sorted((ROOT / folder).rglob(pattern))
    return [f for f in files if f.is_file()]


def cited_paths(text: str, pattern: re.Pattern = CITED_PATH) -> set[str]:
    paths = {m.group(1).rstrip(".") for m in pattern.finditer(text)}
    return paths | set(CITED_MARKDOWN.findall(text))


def missing_citations(files: list[Path]) -> list[str]:
    missing = []
    for file in files:
        group = file.relative_to(ROOT).parts[0]
        pattern = CITED_PATH_OR_SAMPLE if group in SAMPLE_SET_CITERS else CITED_PATH
        for cited in sorted(cited_paths(file.read_text(encoding="utf-8"), pattern)):
            if not (ROOT / cited).exists():
                missing.append(f"{file.relative_to(ROOT)} cites {cited}, which is not in the repository")
    return missing


def test_the_scan_finds_citations_and_flags_a_missing_one():
    text = "see docs/TAID.md and `scripts/bench_vs_trl.py`, (TOY-SCALE.md), docs/results/{name}.json, x/docs/no.md"
    assert cited_paths(text) == {"docs/TAID.md", "scripts/bench_vs_trl.py", "TOY-SCALE.md", "docs/results/"}
    assert not (ROOT / "TOY-SCALE.md").exists()
    assert cited_paths("data/train.json", CITED_PATH_OR_SAMPLE) == {"data/train.json"} and not cited_paths("data/x.py")
    assert missing_citations([ROOT / "data" / "README.md"]) == []
    assert len(citing_files()) > 50


@pytest.mark.parametrize("group", ["README.md", "docs", "taid_vlm", "scripts", "configs", "tests", "data"])
def test_every_cited_path_exists(group):
    files = [f for f in citing_files() if f.relative_to(ROOT).parts[0] == group and f.name != Path(__file__).name]
    assert files
    assert missing_citations(files) == []



MARKDOWN_LINK = re.compile(r"\]\((?!https?://|mailto:)([^)\s]+)\)")


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def broken_links(file: Path) -> list[str]:
    """Relative Markdown links (and #anchors) of ``file`` that lead nowhere, as rendered from its folder."""
    broken = []
    for target in MARKDOWN_LINK.findall(file.read_text(encoding="utf-8")):
        path, _, fragment = target.partition("#")
        linked = (file.parent / path).resolve() if path else file
        if not linked.exists():
            broken.append(f"{file.name} links to {target}: no such file")
        elif fragment and linked.suffix == ".md":
            anchors = {anchor(h) for h in re.findall(r"^#+ (.+)$", linked.read_text(encoding="utf-8"), re.M)}
            if fragment not in anchors:
                broken.append(f"{file.name} links to {target}: no such heading")
    return broken


def test_the_link_check_finds_a_missing_file_and_a_missing_heading(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Scale / Distributed\n[a](#scale--distributed) [b](missing.md) [c](#nope) [d](https://x.org)\n")
    assert broken_links(page) == ["page.md links to missing.md: no such file", "page.md links to #nope: no such heading"]
    assert anchor("Speed and memory of the loss") == "speed-and-memory-of-the-loss"


@pytest.mark.parametrize("page", ["README.md", "data/README.md", *sorted(
    str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md"))])
def test_every_markdown_link_leads_somewhere(page):
    assert broken_links(ROOT / page) == []
