"""The README's Python example runs as written (offline, in a scratch directory)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(tmp_path, monkeypatch):
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    assert namespace["loss"].item() >= 0 and 0.4 <= namespace["schedule"].t <= 1.0
    assert namespace["s"].num_tokens == namespace["t"].num_tokens > 0
