"""The quality benchmark's building blocks that decide what it measures (the runs themselves are
benchmarks, not tests: see docs/results/quality)."""

from pathlib import Path

from taid_vlm.bench import quality
from taid_vlm.bench.quality import report, same_data, stats, transfer
from taid_vlm.demo import PRESETS
from taid_vlm.models.composed import build_composed_vlm

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "bench_quality.py"


def test_teacher_ladder_grows_and_ends_at_the_demo_teacher():
    bench = same_data
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
    bench = same_data
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

    bench = same_data
    source = ROOT / "docs" / "results" / "quality"
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

    bench = same_data
    calls = []

    def fake_distil(run_dir, init, teacher_dir, data_dir, loss, budget, seed, t_start, progress, **config):
        calls.append((loss, config))
        return run_dir

    def fake_eval(directory, students, data_dir, preset, progress):
        return {"rows": [{"model": name, "vqa_accuracy": 1.0, "CIDEr": 0.5, "vqa_n": 10, "caption_backend": "python"}
                         for name in students]}

    monkeypatch.setattr(same_data, "reused_or_distilled", fake_distil)
    monkeypatch.setattr(pipeline, "evaluate_models", fake_eval)
    monkeypatch.setattr(pipeline, "save_initial_model", lambda path, *a, **k: path)
    bench.run_zoo("zoo", ["sft", "fkl", "taid_linear"], [0, 1], PRESETS["quick"], tmp_path, tmp_path, None,
                  tmp_path / "teacher", {"vqa_accuracy": 2.0}, cache_dir=tmp_path / "cache")
    assert len(calls) == 6
    for loss, config in calls:
        assert config.get("teacher_cache") == (None if loss == "sft" else str(tmp_path / "cache"))


# ---- the transfer regime (taid_vlm/bench/quality/transfer.py, stats.py, report.py) ----------------


def test_paired_differences_decide_beats_loses_or_noise_from_the_seeds():
    taid = {0: 50.0, 1: 52.0, 2: 51.0, 3: 53.0, 4: 50.5}
    clearly_worse = {s: v - 3.0 + (0.2 if s % 2 else -0.2) for s, v in taid.items()}
    noisy = {0: 52.0, 1: 50.0, 2: 51.5, 3: 52.0, 4: 51.0}
    rows = stats.paired_table({"taid": taid, "fkl": clearly_worse, "dkd": noisy, "rkl": {9: 1.0}})
    by = {r["baseline"]: r for r in rows}
    assert set(by) == {"fkl", "dkd"}  # rkl shares no seed with taid: no pair
    assert by["fkl"]["verdict"] == "beats" and by["fkl"]["wins"] == 5 and abs(by["fkl"]["mean_diff"] - 3.0) < 0.2
    assert by["dkd"]["verdict"] == "is within seed noise of" and by["dkd"]["n"] == 5
    assert by["dkd"]["per_seed_diff"] == [taid[s] - noisy[s] for s in range(5)]
    mirrored = stats.paired_table({"taid": clearly_worse, "fkl": taid})
    assert mirrored[0]["verdict"] == "loses to" and mirrored[0]["wins"] == 0
    assert stats.verdict(stats.paired({0: 1.0}, {0: 0.0})).startswith("(single seed")


def test_zoo_statements_follow_the_numbers_whichever_way_they_go():
    rows = [{"loss": "sft", "vqa_mean": 40.0}, {"loss": "fkl", "vqa_mean": 45.0}, {"loss": "taid", "vqa_mean": 50.0},
            {"loss": "dkd", "vqa_mean": 38.0}]
    pairs = [{"baseline": "fkl", "verdict": "beats", "mean_diff": 5.0, "std_diff": 1.0, "wins": 5, "n": 5},
             {"baseline": "dkd", "verdict": "beats", "mean_diff": 12.0, "std_diff": 1.0, "wins": 5, "n": 5},
             {"baseline": "sft", "verdict": "is within seed noise of", "mean_diff": 10.0, "std_diff": 30.0, "wins": 3, "n": 5}]
    lines = stats.zoo_statements(rows, pairs, teacher_vqa=60.0, majority=30.0)
    assert lines[0].startswith("taid beats fkl: paired difference +5.00") and "5 of 5 seeds" in lines[0]
    assert lines[1].startswith("taid beats dkd")
    assert lines[2].startswith("taid is within seed noise of sft: paired difference +10.00") and "3 of 5" in lines[2]
    lines = lines[1:]  # the rest as without the sft pair
    assert "best distilled student (taid, 50.00) is +10.00 points from sft and closes 50%" in lines[2]
    assert lines[3] == "2 of 3 distilling losses average above sft."
    assert "vs sft on the teacher's answers" in stats.zoo_statements(rows, [], 60.0, None, stats.SFT_ON_TEACHER_ANSWERS)[0]
    low_teacher = stats.zoo_statements(rows, [], teacher_vqa=35.0, majority=None)
    assert "closes none of" in low_teacher[0] and len(low_teacher) == 2


def test_capacity_gap_statements_say_who_rises_and_whether_the_teachers_are_apart():
    rising = [(40.0, 1.0, 3), (45.0, 1.0, 3), (50.0, 1.0, 3)]
    flat = [(44.0, 2.0, 3), (45.0, 2.0, 3), (44.5, 2.0, 3)]
    lines = stats.gap_statements({"taid": rising, "fkl": flat}, [("S", 35.0), ("M", 47.0), ("L", 59.5)])
    assert lines[0].startswith("Teachers S 35.0 -> M 47.0 -> L 59.5: each step is >= 10 points")
    assert lines[1].startswith("taid's student rises with the teacher (40.0 -> 45.0 -> 50.0); to the largest teacher +5.0 points (beyond")
    assert lines[2].startswith("fkl's student stalls") and "-0.5 points (within" in lines[2]
    assert lines[3].startswith("The capacity-gap claim holds here: taid's student gains from the largest teacher (+5.0)")
    noisy = [(40.0, 1.0, 3), (45.0, 6.0, 3), (48.0, 6.0, 3)]
    assert "within seed noise: the capacity-gap claim is not established" in stats.gap_statements(
        {"taid": noisy, "fkl": flat}, [("S", 35.0), ("M", 47.0), ("L", 59.5)])[-1]
    weak = stats.gap_statements({"taid": rising}, [("S", 9.3), ("L", 59.5)], majority=31.8)
    assert weak[1].startswith("Below the majority-answer baseline (31.8): teacher S (9.3)")
    close = stats.gap_statements({"taid": flat, "fkl": rising}, [("S", 40.0), ("M", 53.8), ("L", 59.2)])
    assert "is NOT >= 10 points" in close[0] and close[-1].startswith("The capacity-gap claim does not hold")
    assert stats.trend([(50.0, 1.0, 3), (40.0, 1.0, 3)]) == "falls"


def test_sizing_says_whether_the_budget_reached_a_plateau():
    points = [{"loss": "sft", "steps": 100, "vqa": 10.0}, {"loss": "sft", "steps": 200, "vqa": 24.0},
              {"loss": "taid", "steps": 200, "vqa": 35.0}, {"loss": "taid", "steps": 100, "vqa": 34.0}]
    sft, taid = stats.plateau_statements(points)
    assert sft.startswith("sft: 10.0 at 100 steps -> 24.0 at 200 steps (+14.0), still rising")
    assert "levelled off" in taid and "(+1.0)" in taid


def test_the_transfer_set_is_a_prefix_of_the_teachers_set_with_the_same_test_scenes(tmp_path):
    import json

    import pytest

    from taid_vlm.data import load_records
    from taid_vlm.demo.pipeline import KEY_FILE, transfer_data
    from taid_vlm.demo.shapes import generate_shapes
    from taid_vlm.errors import UserError

    big = tmp_path / "big"
    generate_shapes(big, 20, 3, seed=0, image_size=32, qa_turns=1)
    (big / KEY_FILE).write_text(json.dumps({"n_train": 20}))
    small = transfer_data(tmp_path / "small", big, 5)
    records = load_records(small / "train.jsonl")
    assert [r.id for r in records] == [r.id for r in load_records(big / "train.jsonl")[:5]]
    assert all(Path(image).is_file() for r in records for image in r.images)  # resolved through the shared images/
    assert records and all(r.images for r in records)
    assert (small / "test_vqa.jsonl").read_text() == (big / "test_vqa.jsonl").read_text()
    assert json.loads((small / KEY_FILE).read_text()) == {"n_train": 20, "transfer_records": 5}
    (small / "train.jsonl").write_text("stale\n")
    assert transfer_data(tmp_path / "small", big, 5) == small  # same key: kept as is
    transfer_data(tmp_path / "small", big, 6)  # a new count rebuilds it
    assert len(load_records(small / "train.jsonl")) == 6
    assert not Path((small / "images").readlink()).is_absolute()  # the work folder can move as a whole
    import shutil

    shutil.move(tmp_path, tmp_path.with_name(tmp_path.name + "-moved"))
    tmp_path, big = tmp_path.with_name(tmp_path.name + "-moved"), tmp_path.with_name(tmp_path.name + "-moved") / "big"
    assert all(Path(i).is_file() for r in load_records(tmp_path / "small" / "train.jsonl") for i in r.images)
    with pytest.raises(UserError, match="needs 50 scenes"):
        transfer_data(tmp_path / "other", big, 50)


def test_the_default_ladder_sits_below_the_zoo_teacher(tmp_path):
    preset, settings = PRESETS["default"], transfer.SETTINGS["default"]
    ladder = transfer.ladder_specs(preset, settings)
    sizes = [sum(p.numel() for p in build_composed_vlm({**spec, "image_size": preset.image_size}, vocab_size=256)[0].parameters())
             for _, spec, _ in ladder]
    top = sum(p.numel() for p in build_composed_vlm({**preset.teacher, "image_size": preset.image_size}, vocab_size=256)[0].parameters())
    assert sizes == sorted(sizes) and sizes[-1] < top
    assert [b.steps for _, _, b in ladder] == [steps for _, _, steps in settings.ladder]
    assert transfer.resolve("taid_ce") == ("taid", {"distil_ratio": 0.5})
    assert transfer.resolve("taid_alpha") == ("taid", {"taid_alpha_per_run": 4.0})


def test_a_transfer_run_end_to_end_writes_its_parts_and_reuses_its_runs(tmp_path, monkeypatch):
    """The quick preset through the real pipeline, in this process: teacher, transfer set, cache,
    zoo, the zoo at the plateau budget and the no-answer variant (--losses narrows them); a second
    run trains nothing."""
    import json
    import sys

    out, work = tmp_path / "out", tmp_path / "work"
    common = ["--preset", "quick", "--seeds", "0", "--losses", "sft", "taid", "--caption-backend", "python",
              "--work", str(work), "--out", str(out)]
    monkeypatch.setattr(sys, "argv", ["bench_quality.py", "--parts", "zoo", "plateau", "noanswer", *common])
    quality.main()
    zoo = json.loads((out / "transfer" / "zoo.json").read_text())
    assert zoo["complete"] and zoo["regime"] == "transfer" and zoo["seeds"] == [0]
    assert {r["loss"] for r in zoo["rows"]} == {"sft", "taid"} and zoo["transfer_records"] == 16
    assert zoo["machine"]["load_average_1_5_15min_at_start"] and zoo["seconds"] > 0
    plateau = json.loads((out / "transfer" / "plateau.json").read_text())
    plateau_steps = transfer.SETTINGS["quick"].plateau_steps
    assert plateau["complete"] and plateau["student_steps"] == plateau_steps != zoo["student_steps"]
    assert f"max_steps: {plateau_steps}" in (work / "transfer" / "plateau-taid-0" / "config.yaml").read_text()
    assert f"for {plateau_steps} steps" in (out / "transfer" / "plateau.md").read_text()
    noanswer = json.loads((out / "transfer" / "noanswer.json").read_text())
    assert {r["loss"] for r in noanswer["rows"]} == {"sft", "taid"} and noanswer["complete"]
    config = (work / "transfer" / "noanswer-sft-0" / "config.yaml").read_text()
    assert "responses: teacher" in config and "cache-teacher-answers" in config
    for name in ("zoo.md", "zoo.png", "plateau.md", "plateau.png", "noanswer.md", "noanswer.png"):
        assert (out / "transfer" / name).is_file()
    stamp = (work / "transfer" / "zoo-taid-0" / "student").stat().st_mtime
    monkeypatch.setattr(sys, "argv", ["bench_quality.py", "--parts", "zoo", *common])
    quality.main()  # the zoo again: every run reused, only evaluated
    assert (work / "transfer" / "zoo-taid-0" / "student").stat().st_mtime == stamp


def test_jobs_share_the_plateau_runs_between_processes(tmp_path, monkeypatch):
    """--jobs 2: a helper process takes the seeds from the other end and only trains; the main
    process's JSON holds every seed, it alone evaluates, and the helper leaves its log."""
    import json
    import sys

    out, work = tmp_path / "out", tmp_path / "work"
    monkeypatch.setattr(sys, "argv", ["bench_quality.py", "--parts", "plateau", "--jobs", "2", "--threads", "1",
                                      "--preset", "quick", "--seeds", "0", "1", "--losses", "sft", "taid",
                                      "--caption-backend", "python", "--work", str(work), "--out", str(out)])
    quality.main()
    plateau = json.loads((out / "transfer" / "plateau.json").read_text())
    assert plateau["complete"] and {s for r in plateau["rows"] for s in r["seeds"]} == {0, 1}
    log = (work / "transfer" / "helper-1.log").read_text()
    command = log.splitlines()[0]  # how far the helper got before the main process stopped it depends on timing
    assert "--parts plateau --seeds 1 0 --losses taid sft" in command and "--helper 1" in command
    assert "Traceback" not in log, log[-2000:]
    assert sorted(p.name for p in (work / "transfer").glob("plateau-eval-*")) == ["plateau-eval-0", "plateau-eval-1"]
    assert not (work / "transfer" / "helper-2.log").exists()  # one helper only


def test_partial_results_render_and_say_how_to_finish(tmp_path):
    rows = {"sft": {0: {"vqa_accuracy": 40.0, "CIDEr": 0.5, "vqa_n": 600, "caption_backend": "python-fallback"}},
            "taid": {0: {"vqa_accuracy": 44.0, "CIDEr": 0.6, "vqa_n": 600, "caption_backend": "python-fallback"}}}
    result = {**transfer.summarize(rows, 60.0, 31.8), "complete": False, "command": "python scripts/bench_quality.py",
              "teacher": {"vqa_accuracy": 60.0, "vqa_n": 600}, "teacher_data_records": 4000, "transfer_records": 300,
              "settings": {"student_steps": 200, "student_batch": 16}, "majority": 31.8}
    assert transfer.refresh("zoo", {**result, "statements": ["stale"]})["statements"] == result["statements"]
    report.render("zoo", result, tmp_path)
    text = (tmp_path / "zoo.md").read_text()
    assert "**Partial:**" in text and "rerun `python scripts/bench_quality.py`" in text
    assert "| taid | 44.00 +- 0.00 | 1 |" in text and "- taid (single seed, no verdict) vs sft:" in text
    gap = {"teachers": [{"name": "S", "params": 1, "vqa": 35.0, "steps": 200, "vqa_n": 600}],
           "rows": [{"teacher": "S", "loss": "taid", "seed": 0, "vqa": 41.0}], "complete": False, "command": "c",
           **transfer.gap_summary([{"name": "S", "params": 1, "vqa": 35.0}], [{"teacher": "S", "loss": "taid", "vqa": 41.0}])}
    report.render("gap", gap, tmp_path)
    assert "41.00 +- 0.00 (1)" in (tmp_path / "gap.md").read_text()


def test_a_part_outside_the_regime_is_refused_with_one_line():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(SCRIPT), "--parts", "taid"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--parts taid not in the transfer regime" in done.stderr


def test_cross_tokenizer_part_pairs_every_method_with_sft_and_says_when_none_beats_it(tmp_path):
    sft = {0: 40.0, 1: 42.0, 2: 41.0}
    ahead = {s: v + 4.0 + 0.1 * s for s, v in sft.items()}
    pairs, lines = stats.xtok_statements({"sft": sft, "taid_span": ahead, "uld": dict(sft)}, 60.0, 31.8)
    assert [p["method"] for p in pairs] == ["taid_span", "uld"] and pairs[0]["verdict"] == "beats"
    assert lines[0].startswith("taid_span beats sft: paired difference +4.10") and lines[-2].endswith(": taid_span.")
    _, lines = stats.xtok_statements({"sft": sft, "uld": {s: v - 1.0 for s, v in sft.items()}}, 60.0, None)
    assert lines[-2].startswith("Cross-tokenizer distillation does not beat sft here: the best method, uld, is -1.00")
    rows = {name: {s: {"vqa_accuracy": v, "CIDEr": 0.5, "vqa_n": 600, "caption_backend": "pycocoevalcap"}
                   for s, v in values.items()} for name, values in (("sft", sft), ("taid_span", ahead))}
    result = {**transfer.xtok_summary(rows, 60.0, 31.8), "complete": True, "command": "c", "majority": 31.8,
              "teacher": {"vqa_accuracy": 60.0, "vqa_n": 600}, "transfer_records": 300, "student_steps": 600,
              "settings": {"student_batch": 16}, "teacher_cache_top_k": 64, "teacher_vocabulary": 578,
              "student_vocabulary": 384, "methods": {k: {"loss": v[0], **v[1]} for k, v in transfer.XTOK.items()},
              "alignment": {"taid_span": {"aligned_fraction/0": 0.75, "mapped_mass/0": 0.9}}}
    report.render("xtok", result, tmp_path)
    text = (tmp_path / "xtok.md").read_text()
    assert "| taid_span | loss taid, cross_tokenizer span | 45.10 +- 1.05 | 3 |" in text
    assert "| +4.10 +- 0.10 | 3/3 | 75.0% | 90.0% |" in text and "- taid_span beats sft" in text
