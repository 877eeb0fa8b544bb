"""The README's result tables are exactly what scripts/readme_tables.py renders from docs/results/,
so no figure can drift from the committed result behind it."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tables():
    spec = importlib.util.spec_from_file_location("readme_tables", ROOT / "scripts" / "readme_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_tables_match_the_committed_results(tables):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = {m.group("name") for m in tables.BLOCK.finditer(readme)}
    assert {"loss", "trl", "zoo", "gap", "taid"} <= blocks <= set(tables.RENDERERS)
    assert tables.render(readme) == readme, "README tables are stale: run python scripts/readme_tables.py"


def test_a_changed_result_changes_the_rendered_table(tables, tmp_path, monkeypatch):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    copy = tmp_path / "results"
    (copy / "quality").mkdir(parents=True)
    for path in (ROOT / "docs" / "results").rglob("*.json"):
        target = copy / path.relative_to(ROOT / "docs" / "results")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.read_text())
    loss = json.loads((copy / "bench_loss.json").read_text())
    loss["rows"][0]["peak_mb"] *= 2
    (copy / "bench_loss.json").write_text(json.dumps(loss))
    monkeypatch.setattr(tables, "RESULTS", copy)
    assert tables.render(readme) != readme


def test_results_section_has_no_figure_outside_generated_blocks(tables):
    """Numbers with a unit of a measurement (s, MB, %, x) may only appear inside generated blocks."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Results"):readme.index("## Design")]
    outside = tables.BLOCK.sub("", section)
    assert re.findall(r"\d[\d,.]*\s?(?:s|MB|%|x)\b", outside) == []
