"""The README's Python example runs as written (offline, in a scratch directory holding a copy of
the sample set it reads), and the README stays a page a newcomer reads in ten minutes."""

import re
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def test_readme_python_example_runs(tmp_path, monkeypatch):
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    shutil.copytree(ROOT / "data", tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    assert namespace["loss"].item() >= 0 and 0.4 <= namespace["schedule"].t <= 1.0
    assert namespace["s"].num_tokens == namespace["t"].num_tokens > 0


def test_readme_is_short_and_has_the_sections_a_newcomer_needs():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 260, "the README is a summary: full tables go to docs/results/README.md"
    headings = re.findall(r"^## (.+)$", text, re.M)
    for needed in ("Quickstart", "Python API", "Command line", "Families", "Recipes", "Scale / Distributed",
                   "Results", "Design"):
        assert needed in headings, needed
