"""Cross-tokenizer distillation end to end (docs/CROSS-TOKENIZER.md), on tiny models offline.

The text pair: a Qwen2 teacher (the shared tiny BPE, ChatML with a system prompt) and a Llama
student on a second, different BPE (testing/tiny.py ``vocabulary="other"``) with Llama 3 tags.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from taid_vlm.cli import main
from taid_vlm.data import load_records
from taid_vlm.demo.shapes import generate_shapes
from taid_vlm.models import load
from taid_vlm.testing.tiny import OTHER_FEWER_MERGES, save_tiny
from taid_vlm.train import DistillConfig, distill
from taid_vlm.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("xtok")
    generate_shapes(root / "shapes", 24, 2, seed=0, text=True)
    save_tiny("qwen2", root / "teacher", hidden_size=32, seed=1)
    save_tiny("llama", root / "student", hidden_size=32, seed=2, vocabulary="other")
    return root


def _config(root: Path, out: Path, **changes) -> DistillConfig:
    settings = dict(teacher=str(root / "teacher"), student=str(root / "student"), data=str(root / "shapes" / "train.jsonl"),
                    output=str(out), batch_size=4, max_steps=6, lr=3e-3, warmup_steps=0, lr_scheduler="constant",
                    log_every=1, save_every=6, progress=False, seed=0, cross_tokenizer="span")
    settings.update(changes)
    return DistillConfig(**settings).validate()


def _falling(rows: list[dict]) -> bool:
    """Finite, and the last three steps' mean below the first three's (the loss with its CE term)."""
    values = [r["loss"] for r in rows]
    return all(isinstance(v, float) and torch.isfinite(torch.tensor(v)) for v in values) and \
        sum(values[-3:]) / 3 < sum(values[:3]) / 3


@pytest.mark.parametrize("mode, changes", [
    ("span", dict(loss="taid", loss_settings={"taid": {"t_start": 0.7}})),
    ("uld", dict(loss="uld", distil_ratio=0.5)),
], ids=["span-taid", "uld"])
def test_a_pair_with_different_vocabularies_and_chat_tags_trains_and_the_student_reloads(pair, tmp_path, mode, changes):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = distill(_config(pair, tmp_path / mode, cross_tokenizer=mode, **changes))
    rows = read_metrics(tmp_path / mode / "metrics.jsonl")
    assert len(rows) == 6 and _falling(rows)
    assert all(0.5 < r["aligned_fraction"] < 1.0 for r in rows)  # the student splits some words finer
    assert ("mapped_mass" in rows[0]) == (mode == "span")
    if mode == "span":
        assert all(0.0 < r["mapped_mass"] <= 1.0 for r in rows)
    model = AutoModelForCausalLM.from_pretrained(result.student_dir)
    tokenizer = AutoTokenizer.from_pretrained(result.student_dir)
    assert len(tokenizer) == len(load(pair / "teacher").tokenizer) - OTHER_FEWER_MERGES
    assert "<|eot_id|>" in tokenizer.chat_template
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What colour is the circle?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    assert model.generate(**prompt, max_new_tokens=3, do_sample=False).shape[1] > prompt["input_ids"].shape[1]


def test_different_tokenizers_without_cross_tokenizer_are_refused_naming_the_setting(pair, tmp_path, capsys):
    out = tmp_path / "off"
    argv = ["distill", f"--teacher={pair / 'teacher'}", f"--student={pair / 'student'}",
            f"--data={pair / 'shapes' / 'train.jsonl'}", f"--output={out}", "--max-steps=1", "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in err
    assert lines[0].startswith("taid-vlm distill: error: teacher and student vocabularies differ at id 5")
    assert "cross_tokenizer: span" in lines[0] and not out.exists()


def test_a_student_tokenizer_without_offsets_is_refused_before_anything_is_written(pair, tmp_path, capsys):
    from transformers import ByT5Tokenizer, LlamaConfig, LlamaForCausalLM

    student = tmp_path / "byt5-student"
    tokenizer = ByT5Tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, pad_token_id=0, eos_token_id=1)
    LlamaForCausalLM(config).save_pretrained(student)
    tokenizer.save_pretrained(student)
    out = tmp_path / "never"
    argv = ["distill", f"--teacher={pair / 'teacher'}", f"--student={student}", "--cross-tokenizer=span",
            f"--data={pair / 'shapes' / 'train.jsonl'}", f"--output={out}", "--max-steps=1", "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in err
    assert f"student={student}: its tokenizer (ByT5Tokenizer) reports no character offsets" in lines[0]
    assert not out.exists()


def test_identical_tokenizers_span_gives_the_normal_paths_loss_and_gradients(pair, tmp_path):
    """span through the whole pipeline (alignment, vocabulary map, top-k + tail) against the
    ordinary same-tokenizer path, live teacher: with k = V - 1 the k + 1 buckets are every token."""
    from taid_vlm.losses import TAID
    from taid_vlm.train.cross_tokenizer import CrossTokenizer
    from taid_vlm.train.objective import training_loss

    save_tiny("qwen2", tmp_path / "same-student", hidden_size=16, seed=3)
    teacher = load(pair / "teacher", role="teacher")
    student = load(tmp_path / "same-student", role="student")
    records = load_records(pair / "shapes" / "train.jsonl")[:4]
    vocab = student.lm_head().weight.shape[0]
    config = _config(pair, tmp_path / "unused", student=str(tmp_path / "same-student"), cross_tokenizer_top_k=vocab - 1)
    cross = CrossTokenizer.for_run(config, student, teacher)
    results = []
    for use_span in (False, True):
        student.model.zero_grad()
        s_out = student.response_outputs(records)
        t_out = teacher.response_outputs(records)
        if use_span:
            t_out = cross.teacher_outputs(s_out, t_out, records)
        parts = training_loss(TAID(t=0.6), s_out, t_out, num_tokens=float(s_out.num_tokens), distil_ratio=0.7)
        parts.total.backward()
        results.append((parts.total.detach(), {n: p.grad.clone() for n, p in student.model.named_parameters()}))
    assert cross.step_metrics(lambda x: x)["aligned_fraction"] == 1.0
    (plain, plain_grads), (span, span_grads) = results
    torch.testing.assert_close(span, plain, rtol=1e-5, atol=1e-6)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(span_grads[name], grad, rtol=1e-4, atol=1e-6)


def test_span_and_uld_read_a_teacher_cache_that_holds_the_teachers_own_ids(pair, tmp_path):
    """The cache is built once with the teacher's tokenizer; the mapping happens at load. bf16 autocast."""
    from taid_vlm.teacher_cache import TeacherCache, build_cache

    cache = tmp_path / "cache"
    build_cache(load(pair / "teacher", role="teacher"), str(pair / "teacher"),
                load_records(pair / "shapes" / "train.jsonl"), cache, top_k=16, progress=False)
    assert TeacherCache(cache).teacher_text().end_of_turn == "<|im_end|>"
    for mode, changes in (("span", dict(loss="fkl")), ("uld", dict(loss="uld", distil_ratio=0.5))):
        out = tmp_path / f"cached-{mode}"
        distill(_config(pair, out, teacher=None, teacher_cache=str(cache), cross_tokenizer=mode, max_steps=6,
                        mixed_precision="bf16", **changes))
        rows = read_metrics(out / "metrics.jsonl")
        assert _falling(rows) and all(0.5 < r["aligned_fraction"] < 1.0 for r in rows)


def test_a_vlm_pair_across_families_and_tokenizers_trains(tmp_path):
    """Qwen2-VL teacher (shared BPE, ChatML, 4 image tokens) -> SmolVLM student (other BPE,
    "Assistant:" turns ending in <end_of_utterance>, 4 image tokens): image tokens stay out."""
    generate_shapes(tmp_path / "shapes", 12, 2, seed=0, image_size=32)
    save_tiny("qwen2_vl", tmp_path / "teacher", seed=1)
    save_tiny("smolvlm", tmp_path / "student", seed=2, image_size=32, vocabulary="other")
    out = tmp_path / "vlm"
    distill(_config(tmp_path, out, max_steps=4, batch_size=3, loss="taid", freeze_vision=False))
    rows = read_metrics(out / "metrics.jsonl")
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows) and all(r["aligned_fraction"] > 0.5 for r in rows)
    assert load(out / "student").vocab_size == load(tmp_path / "teacher").vocab_size - OTHER_FEWER_MERGES


@pytest.mark.skipif(shutil.which("accelerate", path=str(Path(sys.executable).parent)) is None, reason="accelerate CLI missing")
def test_two_processes_ddp_match_one_process_and_fsdp_runs(pair, tmp_path):
    from safetensors.torch import load_file

    from test_distributed import _env, _launch_two

    args = ["distill", f"--teacher={pair / 'teacher'}", f"--student={pair / 'student'}", "--cross-tokenizer=span",
            f"--data={pair / 'shapes' / 'train.jsonl'}", "--max-steps=2", "--save-every=2", "--log-every=1",
            "--no-progress", "lr=0.003", "loss=fkl"]
    env = _env()
    for name, extra in (("ddp", []), ("fsdp", ["distributed=fsdp", "cross_tokenizer=uld", "loss=uld", "distil_ratio=0.5"])):
        run = subprocess.run(_launch_two(args + [f"--output={tmp_path / name}", "--batch-size=2", *extra]), env=env,
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        ranks = json.loads((tmp_path / name / "ranks.json").read_text())
        assert len({r["weights_sha256"] for r in ranks if r["weights_sha256"]}) == 1
    one = subprocess.run([sys.executable, "-m", "taid_vlm.cli", *args, f"--output={tmp_path / 'one'}", "--batch-size=4"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = (load_file(str(tmp_path / d / "student" / "model.safetensors")) for d in ("ddp", "one"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4
    logged = [[r["aligned_fraction"] for r in read_metrics(tmp_path / d / "metrics.jsonl")] for d in ("ddp", "one")]
    assert logged[0] == pytest.approx(logged[1])  # summed over ranks: the global batch's fraction
    fsdp = read_metrics(tmp_path / "fsdp" / "metrics.jsonl")
    assert all(torch.isfinite(torch.tensor(r["loss"])) and r["aligned_fraction"] > 0.5 for r in fsdp)


def test_packed_rows_align_as_padded_ones(pair, tmp_path):
    """packing: each side packs its own tokens; aligned in the canonical (record, token) order, the
    loss and the aligned share of every step are the padded run's."""
    rows = [read_metrics(distill(_config(pair, tmp_path / str(pack), max_steps=3, loss="taid", packing=pack)).output
                         / "metrics.jsonl") for pack in (False, True)]
    assert [r["loss"] for r in rows[1]] == pytest.approx([r["loss"] for r in rows[0]], rel=1e-5)
    assert [r["aligned_fraction"] for r in rows[1]] == [r["aligned_fraction"] for r in rows[0]]
