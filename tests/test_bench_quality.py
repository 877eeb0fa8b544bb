"""The quality benchmark's building blocks that decide what it measures (the runs themselves are
benchmarks, not tests: see docs/results/quality)."""

import importlib.util
from pathlib import Path

from taid_vlm.demo import PRESETS
from taid_vlm.models.composed import build_composed_vlm

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_quality.py"


def _bench_quality():
    spec = importlib.util.spec_from_file_location("bench_quality", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_teacher_ladder_grows_and_ends_at_the_demo_teacher():
    bench = _bench_quality()
    preset = PRESETS["default"]
    ladder = bench.teacher_ladder(preset)
    assert [name for name, _, _ in ladder] == ["S", "M", "L"]
    assert ladder[-1][1]["vision_kwargs"] == preset.teacher["vision_kwargs"]
    assert ladder[-1][1]["text_config"]["hidden_size"] == preset.teacher["text_config"]["hidden_size"]
    sizes = [sum(p.numel() for p in build_composed_vlm({**spec, "image_size": preset.image_size}, vocab_size=256)[0].parameters())
             for _, spec, _ in ladder]
    assert sizes == sorted(sizes) and len(set(sizes)) == 3
    steps = [budget.steps for _, _, budget in ladder]
    assert steps == sorted(steps) and steps[-1] > preset.teacher_budget.steps


def test_every_zoo_and_taid_variant_resolves_to_a_loss_and_its_settings():
    bench = _bench_quality()
    assert bench.loss_config("taid_linear") == ("taid", {"taid_adaptive": False})
    assert bench.loss_config("taid_t0.2") == ("taid", {"t_start": 0.2})
    assert bench.loss_config("dkd") == ("dkd", {})
    loss, extra = bench.loss_config("taid_t0.7")
    extra.pop("t_start")
    assert bench.TAID_VARIANTS["taid_t0.7"] == {"t_start": 0.7}  # popping a copy leaves the table intact


def test_tables_name_the_caption_backend_and_the_questions_actually_scored(tmp_path):
    """Re-rendered from the committed JSON: the fallback that scored those runs is named, and the
    question count is the one scored (the teacher row's), not the preset's cap."""
    import json
    import shutil

    bench = _bench_quality()
    source = SCRIPT.parents[1] / "docs" / "results" / "quality"
    for name in ("zoo.json", "taid.json", "gap.json"):
        shutil.copy(source / name, tmp_path / name)
    bench.render_existing(tmp_path, ["zoo", "taid"])
    zoo = json.loads((tmp_path / "zoo.json").read_text())
    table = (tmp_path / "zoo.md").read_text()
    assert f"on {zoo['teacher']['vqa_n']:,} questions" in table
    assert f"CIDEr-D, {zoo['teacher']['caption_backend']}" in table
    fresh = bench.zoo_markdown({**zoo, "caption_backends": ["pycocoevalcap"]}, "header")
    assert "CIDEr-D, pycocoevalcap" in fresh and "python-fallback" not in fresh


def test_a_loss_sweep_reads_one_teacher_cache_instead_of_running_the_teacher_per_run(tmp_path, monkeypatch):
    """run_zoo hands every distilling run the cache (sft needs no teacher); the runs themselves
    are the benchmark, so distillation and evaluation are recorded here, not executed."""
    import taid_vlm.demo.pipeline as pipeline

    bench = _bench_quality()
    calls = []

    def fake_distil(run_dir, init, teacher_dir, data_dir, loss, budget, seed, t_start, progress, reuse=False, **config):
        calls.append((loss, config))
        return run_dir

    def fake_eval(directory, students, data_dir, preset, progress):
        return {"rows": [{"model": name, "vqa_accuracy": 1.0, "CIDEr": 0.5, "vqa_n": 10, "caption_backend": "python"}
                         for name in students]}

    monkeypatch.setattr(pipeline, "distil_student", fake_distil)
    monkeypatch.setattr(pipeline, "evaluate_models", fake_eval)
    monkeypatch.setattr(pipeline, "save_initial_model", lambda path, *a, **k: path)
    bench.run_zoo("zoo", ["sft", "fkl", "taid_linear"], [0, 1], PRESETS["quick"], tmp_path, tmp_path, None,
                  tmp_path / "teacher", {"vqa_accuracy": 2.0}, cache_dir=tmp_path / "cache")
    assert len(calls) == 6
    for loss, config in calls:
        assert config.get("teacher_cache") == (None if loss == "sft" else str(tmp_path / "cache"))
