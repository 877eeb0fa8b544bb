"""Every shipped recipe parses and resolves to a valid config (paper settings where they apply)."""

from pathlib import Path

import pytest
import yaml

from taid_vlm.train import load_config

RECIPES = sorted((Path(__file__).resolve().parents[1] / "configs" / "recipes").glob("*.yaml"))


def test_there_are_recipes_for_the_paper_pairs():
    names = {p.stem for p in RECIPES}
    assert {"taid-vlm-2b", "taid-llm-1.5b", "phi3-mini_to_tinyllama", "llama2-7b_to_tinyllama",
            "stablelm-zephyr-3b_to_pythia-410m", "qwen2-vl-7b_to_2b"} <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_resolves(recipe):
    config = load_config(recipe, {"output": "runs/x"})
    assert config.loss == "taid" and config.teacher and config.student
    assert "Hardware" in recipe.read_text() and "Launch" in recipe.read_text()


@pytest.mark.parametrize("name, t_start", [("phi3-mini_to_tinyllama", 0.4), ("llama2-7b_to_tinyllama", 0.2),
                                           ("stablelm-zephyr-3b_to_pythia-410m", 0.2)])
def test_paper_t_start(name, t_start):
    recipe = next(p for p in RECIPES if p.stem == name)
    assert load_config(recipe, {"output": "runs/x"}).settings_of()["t_start"] == t_start
    assert "t_start" in yaml.safe_load(recipe.read_text())["taid"]  # the recipe nests TAID's settings


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_states_how_it_fits_its_hardware(recipe):
    """Precision, parallelism, checkpointing and teacher placement are written down, never left to defaults."""
    import yaml

    written = yaml.safe_load(recipe.read_text())
    assert {"mixed_precision", "distributed", "gradient_checkpointing", "teacher_dtype"} <= set(written)
    config = load_config(recipe, {"output": "runs/x"})
    assert config.mixed_precision == "bf16" and config.student_dtype == "float32"  # fp32 masters under autocast
    assert config.teacher_dtype == "bfloat16"
