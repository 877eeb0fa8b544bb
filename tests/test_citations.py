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
