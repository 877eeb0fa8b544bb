"""The result tables of docs/results/README.md and the README's summary are exactly what
scripts/readme_tables.py renders from docs/results/, so no figure can drift from the committed
result behind it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tables():
    from taid_vlm.bench import tables

    return tables


def test_readme_tables_match_the_committed_results(tables):
    readme, full = (path.read_text(encoding="utf-8") for path in tables.DOCUMENTS)
    in_full = {m.group("name") for m in tables.BLOCK.finditer(full)}
    assert {m.group("name") for m in tables.BLOCK.finditer(readme)} == {"summary", "generation"}
    assert in_full == set(tables.RENDERERS) - {"summary"}
    for path, text in zip(tables.DOCUMENTS, (readme, full)):
        assert tables.render(text, path) == text, f"{path.name} tables are stale: run python scripts/readme_tables.py"


def test_a_changed_result_changes_the_rendered_tables(tables, tmp_path, monkeypatch):
    copy = tmp_path / "results"
    (copy / "quality").mkdir(parents=True)
    for path in (ROOT / "docs" / "results").rglob("*.json"):
        target = copy / path.relative_to(ROOT / "docs" / "results")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.read_text())
    loss = json.loads((copy / "bench_loss.json").read_text())
    for row in loss["rows"]:
        row["peak_mb"] *= 2
    (copy / "bench_loss.json").write_text(json.dumps(loss))
    monkeypatch.setattr(tables, "RESULTS", copy)
    for path in tables.DOCUMENTS:
        text = path.read_text(encoding="utf-8")
        assert tables.render(text, path) != text, path.name


def test_links_are_written_relative_to_the_document(tables):
    block = "see [bench_loss.json](docs/results/bench_loss.json), [x](https://example.org), [y](#results)"
    assert tables.relink(block, ROOT / "README.md") == block
    assert tables.relink(block, ROOT / "docs" / "results" / "README.md") == (
        "see [bench_loss.json](bench_loss.json), [x](https://example.org), [y](#results)")


def test_results_have_no_figure_outside_generated_blocks(tables):
    """Numbers with a unit of a measurement (s, MB, %, x) may only appear inside generated blocks."""
    readme, full = (path.read_text(encoding="utf-8") for path in tables.DOCUMENTS)
    for section in (readme[readme.index("## Results"):readme.index("\n## ", readme.index("## Results") + 1)], full):
        outside = tables.BLOCK.sub("", section)
        assert re.findall(r"\d[\d,.]*\s?(?:s|MB|%|x)\b", outside) == []
