"""Lower layers import nothing above them: read every module's imports with ``ast`` (imports
inside functions and under ``TYPE_CHECKING`` count too) and check them against ``LAYERS``.

The same order is in the README's Design section; a test keeps the two equal.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import taid_vlm

PACKAGE = Path(taid_vlm.__file__).parent
README = PACKAGE.parent / "README.md"

# Bottom to top. A part may import its own modules and those of strictly lower layers only,
# so two parts of one layer (losses and data) never import each other.
LAYERS: list[tuple[str, ...]] = [
    ("__init__", "errors", "files", "flags"),
    ("losses", "data"),
    ("models",),
    ("teacher_server",),
    ("teacher_cache", "testing"),
    ("train",),
    ("eval",),
    ("demo",),
    ("cli",),
    ("bench",),  # the benchmarks: they drive the CLI (fuzz_cli) and build on the demo; nothing imports them
    ("__main__",),  # python -m taid_vlm
]
RANK = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}


def part_of(module: tuple[str, ...]) -> str:
    """``("train", "loop")`` -> ``train``; the package itself (``from .. import __version__``) -> ``__init__``."""
    if not module:
        return "__init__"
    head = module[0]
    return head if (PACKAGE / head).is_dir() or (PACKAGE / f"{head}.py").is_file() else "__init__"


def imports_of(path: Path) -> list[tuple[int, tuple[str, ...]]]:
    """(line, module path inside taid_vlm) of every import of our own code in ``path``."""
    rel = path.relative_to(PACKAGE).with_suffix("").parts
    package = rel[:-1]  # the package a relative import starts from (an __init__ is in its own package)
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                module = base + tuple(node.module.split(".") if node.module else ())
                if not node.module:  # from . import x: x is a module of that package
                    found += [(node.lineno, base + (a.name,)) for a in node.names]
                    continue
            elif node.module and (node.module == "taid_vlm" or node.module.startswith("taid_vlm.")):
                module = tuple(node.module.split(".")[1:])
            else:
                continue
            found.append((node.lineno, module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, tuple(a.name.split(".")[1:])) for a in node.names if a.name.startswith("taid_vlm")]
    return found


def test_every_part_of_the_package_has_a_layer():
    parts = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
             if (p.suffix == ".py" or (p / "__init__.py").is_file())}
    assert parts == set(RANK), f"add {parts - set(RANK)} to LAYERS (and the README), or drop {set(RANK) - parts}"


def test_lower_layers_import_nothing_above_them():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        me = part_of(path.relative_to(PACKAGE).with_suffix("").parts)
        for line, module in imports_of(path):
            target = part_of(module)
            if target != me and RANK[target] >= RANK[me]:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({me}, layer {RANK[me]}) imports "
                             f"{'.'.join(module) or 'taid_vlm'} ({target}, layer {RANK[target]})")
    assert not wrong, "\n".join(wrong)


def test_the_checker_sees_an_upward_import(tmp_path, monkeypatch):
    """The test above can fail: a data module importing train is caught, even inside a function."""
    fake = tmp_path / "taid_vlm"
    (fake / "data").mkdir(parents=True)
    (fake / "train").mkdir()
    module = fake / "data" / "sneaky.py"
    module.write_text("def f():\n    from ..train import loop\n    from .records import Record\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    assert imports_of(module) == [(2, ("train",)), (3, ("data", "records"))]
    me, target = part_of(("data", "sneaky")), part_of(("train",))
    assert RANK[target] > RANK[me]


def test_losses_are_pure_tensor_math():
    """No model stack, no files: losses/ takes tensors and returns tensors."""
    for path in sorted((PACKAGE / "losses").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"^\s*(import|from) (transformers|PIL|datasets|safetensors)\b", text, re.M), path.name
        assert not re.search(r"\bopen\(|\.write_text\(|\.read_text\(", text), path.name


def test_the_readme_states_the_same_order():
    text = README.read_text(encoding="utf-8")
    stated = re.search(r"Layers, bottom to top: (.+?)\. [A-Z]", " ".join(text.split()))
    assert stated, "the README's Design section states the layer order as 'Layers, bottom to top: ...'"
    layers = [[p.strip(" `/") for p in group.split(",")] for group in stated.group(1).split(" < ")]
    shown = [tuple(sorted(p.removesuffix(".py") for p in group)) for group in layers]
    ours = [tuple(sorted(p for p in parts if p not in ("__init__", "__main__"))) for parts in LAYERS]
    assert shown == [parts for parts in ours if parts]
