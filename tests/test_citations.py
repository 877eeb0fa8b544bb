"""Every path the project cites must exist in the repository: a reader who follows a reference
from the code, the README or the docs finds the file. Paths under the top-level folders
(docs/, scripts/, configs/, tests/, taid_vlm/) and upper-case Markdown names (TAID.md) count."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOP_LEVEL = ("docs", "scripts", "configs", "tests", "taid_vlm")
# A path starts at a top-level folder (not inside a longer path or word) and runs over path characters.
CITED_PATH = re.compile(r"(?<![\w./-])((?:" + "|".join(TOP_LEVEL) + r")/[\w./-]*)")
CITED_MARKDOWN = re.compile(r"(?<![\w./-])([A-Z][A-Z0-9_-]*\.md)\b")


def citing_files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "pyproject.toml"]
    for folder, patterns in (("docs", ("*.md",)), ("taid_vlm", ("*.py",)), ("scripts", ("*.py", "*.sh")),
                             ("configs", ("*.yaml",)), ("tests", ("*.py",))):
        for pattern in patterns:
            files += sorted((ROOT / folder).rglob(pattern))
    return [f for f in files if f.is_file()]


def cited_paths(text: str) -> set[str]:
    paths = {m.group(1).rstrip(".") for m in CITED_PATH.finditer(text)}
    return paths | set(CITED_MARKDOWN.findall(text))


def missing_citations(files: list[Path]) -> list[str]:
    missing = []
    for file in files:
        for cited in sorted(cited_paths(file.read_text(encoding="utf-8"))):
            if not (ROOT / cited).exists():
                missing.append(f"{file.relative_to(ROOT)} cites {cited}, which is not in the repository")
    return missing


def test_the_scan_finds_citations_and_flags_a_missing_one():
    text = "see docs/TAID.md and `scripts/bench_vs_trl.py`, (TOY-SCALE.md), docs/results/{name}.json, x/docs/no.md"
    assert cited_paths(text) == {"docs/TAID.md", "scripts/bench_vs_trl.py", "TOY-SCALE.md", "docs/results/"}
    assert not (ROOT / "TOY-SCALE.md").exists()
    assert len(citing_files()) > 50


@pytest.mark.parametrize("group", ["README.md", "docs", "taid_vlm", "scripts", "configs", "tests"])
def test_every_cited_path_exists(group):
    files = [f for f in citing_files() if f.relative_to(ROOT).parts[0] == group and f.name != Path(__file__).name]
    assert files
    assert missing_citations(files) == []
