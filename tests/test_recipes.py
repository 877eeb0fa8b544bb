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


def test_there_are_recipes_for_the_pairs_distilled_today():
    """Qwen3-VL-8B -> 2B and Gemma-3-12B -> 4B in full, Qwen3 text, and a LoRA student."""
    by_name = {p.stem: load_config(p, {"output": "runs/x"}) for p in RECIPES}
    pairs = {name: (c.teacher, c.student) for name, c in by_name.items()}
    assert pairs["qwen3-vl-8b_to_2b"] == ("Qwen/Qwen3-VL-8B-Instruct", "Qwen/Qwen3-VL-2B-Instruct")
    assert pairs["gemma-3-12b_to_4b"] == ("google/gemma-3-12b-it", "google/gemma-3-4b-it")
    assert pairs["qwen3-8b_to_0.6b"] == ("Qwen/Qwen3-8B", "Qwen/Qwen3-0.6B")
    lora = by_name["qwen3-vl-8b_to_2b_lora"]
    assert lora.lora_r > 0 and lora.lora_settings().targets == "all-linear" and not lora.save_adapter_only
    for name in ("qwen3-vl-8b_to_2b", "gemma-3-12b_to_4b", "qwen3-8b_to_0.6b", "qwen3-vl-8b_to_2b_lora"):
        text = next(p for p in RECIPES if p.stem == name).read_text()
        assert "ESTIMATED" in text and "x 2 B" in text, name  # the memory arithmetic, labelled as such


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
    assert config.mixed_precision == "bf16"
    # fp32 masters under autocast; a LoRA student's trainable masters are its fp32 adapters, over a frozen base
    assert config.student_dtype == "float32" or (config.lora_r > 0 and config.student_dtype == "bfloat16")
    assert config.teacher_dtype == "bfloat16"
