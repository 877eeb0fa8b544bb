"""Two real CPU processes (gloo) under accelerate: ranks stay identical and match one process."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from taid_vlm.data import load_records
from taid_vlm.demo.shapes import generate_shapes
from taid_vlm.models.composed import build_composed_vlm

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("accelerate", path=str(Path(sys.executable).parent)) is None, reason="accelerate CLI missing")
def test_two_processes_hold_identical_weights_and_t_and_match_one_process(tmp_path):
    texts = _shapes_and_teacher(tmp_path)
    args = ["distill", f"--teacher={tmp_path / 'teacher'}", "--student=composed:tiny?num_image_tokens=4&seed=2",
            f"--data={tmp_path / 'shapes' / 'train.jsonl'}", "--max-steps=3", "--save-every=3", "--no-progress",
            "lr=0.003", "taid_alpha_per_run=5"]
    env = _env()
    two = subprocess.run(_launch_two(args + [f"--output={tmp_path / 'ddp'}", "--batch-size=2"]),
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    ranks = json.loads((tmp_path / "ddp" / "ranks.json").read_text())
    assert [r["rank"] for r in ranks] == [0, 1]
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    assert ranks[0]["t"] == ranks[1]["t"] and ranks[0]["t"] > 0.4

    a, b, moved = _against_one_process(args, tmp_path, "ddp", texts, env, timeout=300)
    assert moved > 1e-3
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-3 * moved  # same global batch, same update
    t_ddp = [json.loads(x)["t"] for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    t_one = [json.loads(x)["t"] for x in (tmp_path / "single" / "metrics.jsonl").read_text().splitlines()]
    assert t_ddp == pytest.approx(t_one, rel=1e-4)  # t follows the all-reduced loss


def _against_one_process(args: list[str], tmp_path: Path, launched: str, texts: list[str], env: dict,
                         timeout: int) -> tuple[dict, dict, float]:
    """Run ``args`` as one process with batch 4 (the launched run's global batch) into
    ``tmp_path/single``: (the launched run's weights, the single run's, how far training moved them)."""
    one = subprocess.run([sys.executable, "-m", "taid_vlm.cli"] + args + [f"--output={tmp_path / 'single'}", "--batch-size=4"],
                         env=env, capture_output=True, text=True, timeout=timeout)
    assert one.returncode == 0, one.stderr[-3000:]
    a = load_file(str(tmp_path / launched / "student" / "model.safetensors"))
    b = load_file(str(tmp_path / "single" / "student" / "model.safetensors"))
    start = build_composed_vlm("tiny", texts=texts, num_image_tokens=4, seed=2)[0].state_dict()
    return a, b, max((b[k] - start[k]).abs().max().item() for k in b if k in start)


def _launch_two(args: list[str]) -> list[str]:
    """Two real CPU processes over gloo (``accelerate launch --cpu`` would start only one)."""
    return [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "taid_vlm.cli", *args]


def _env() -> dict[str, str]:
    return dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")


def _shapes_and_teacher(root: Path) -> list[str]:
    """Shapes data and a saved composed teacher under ``root``; the texts its tokenizer was built on."""
    generate_shapes(root / "shapes", 24, 2, seed=0, image_size=32)
    texts = [m["content"] for r in load_records(root / "shapes" / "train.jsonl") for m in r.messages]
    teacher, processor = build_composed_vlm("tiny", texts=texts, seed=1)
    teacher.save_pretrained(root / "teacher")
    processor.save_pretrained(root / "teacher")
    return texts


def _max_rel_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest per-tensor relative difference ||a - b|| / ||b|| over the whole student."""
    assert a.keys() == b.keys()
    return max(((a[k].double() - b[k].double()).norm() / b[k].double().norm().clamp_min(1e-30)).item() for k in a)


@pytest.mark.skipif(shutil.which("accelerate", path=str(Path(sys.executable).parent)) is None, reason="accelerate CLI missing")
def test_fsdp_two_processes_match_one_process_and_resume_exactly_after_sigkill(tmp_path):
    """distributed=fsdp shards the student over 2 gloo ranks: the same student and t as one process
    with the same global batch, and a run killed with SIGKILL and resumed ends where the whole run does.
    The whole run also shards its teacher (teacher_shard) and checkpoints activations, the killed
    one does neither: where the teacher lives and whether activations are recomputed must not
    change the result. Both accumulate 2 micro-batches a step. One launched rank shards too."""
    import signal
    import time

    texts = _shapes_and_teacher(tmp_path)
    args = ["distill", f"--teacher={tmp_path / 'teacher'}", "--student=composed:tiny?num_image_tokens=4&seed=2",
            f"--data={tmp_path / 'shapes' / 'train.jsonl'}", "--max-steps=8", "--save-every=2", "--keep-checkpoints=10",
            "--no-progress", "--log-every=1", "lr=0.003", "taid_alpha_per_run=2"]
    env = _env()
    fsdp = args + ["--distributed=fsdp", "--batch-size=1", "--grad-accum=2"]  # global batch 4, as one process
    whole = subprocess.run(_launch_two(fsdp + ["--teacher-shard", "--gradient-checkpointing", f"--output={tmp_path / 'fsdp'}"]), env=env, capture_output=True,
                           text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr[-3000:]
    a, b, moved = _against_one_process(args, tmp_path, "fsdp", texts, env, timeout=600)
    assert moved > 1e-3  # training moved the weights
    assert _max_rel_diff(a, b) < 1e-5
    t_fsdp = [json.loads(x)["t"] for x in (tmp_path / "fsdp" / "metrics.jsonl").read_text().splitlines()]
    t_one = [json.loads(x)["t"] for x in (tmp_path / "single" / "metrics.jsonl").read_text().splitlines()]
    assert t_fsdp == pytest.approx(t_one, rel=1e-6) and t_fsdp[-1] > t_fsdp[0]
    ranks = json.loads((tmp_path / "fsdp" / "ranks.json").read_text())
    assert [r["t"] for r in ranks] == [ranks[0]["t"]] * 2 and [r["sharded"] for r in ranks] == [True, True]

    # torchrun with ONE process still shards (FSDP2 over a mesh of one, as gpu_check.sh runs it on
    # a single GPU) and trains as the unlaunched run does
    one_rank = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
                               "-m", "taid_vlm.cli", *args, "--distributed=fsdp", "--batch-size=2", "--grad-accum=2",
                               f"--output={tmp_path / 'fsdp1'}"], env=env, capture_output=True, text=True, timeout=600)
    assert one_rank.returncode == 0, one_rank.stderr[-3000:]
    assert [r["sharded"] for r in json.loads((tmp_path / "fsdp1" / "ranks.json").read_text())] == [True]
    assert _max_rel_diff(load_file(str(tmp_path / "fsdp1" / "student" / "model.safetensors")), b) < 1e-5
    assert json.loads((tmp_path / "single" / "ranks.json").read_text())[0]["sharded"] is False

    killed = tmp_path / "killed"
    victim = subprocess.Popen(_launch_two(fsdp + [f"--output={killed}"]), env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = killed / "checkpoints" / "step-0000004" / "trainer_state.json"
    deadline = time.time() + 400
    while not marker.exists() and time.time() < deadline and victim.poll() is None:
        time.sleep(0.05)
    os.killpg(victim.pid, signal.SIGKILL)  # the launcher and both ranks
    victim.wait()
    assert marker.exists(), "the fsdp run never reached its step-4 checkpoint"
    assert not (killed / "student").exists()
    resumed = subprocess.run(_launch_two(fsdp + [f"--output={killed}", "--resume"]), env=env, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    c = load_file(str(killed / "student" / "model.safetensors"))
    assert _max_rel_diff(c, a) < 1e-6
    t_resumed = {json.loads(x)["step"]: json.loads(x)["t"] for x in (killed / "metrics.jsonl").read_text().splitlines()}
    assert sorted(t_resumed) == list(range(1, 9)) and list(t_resumed.values()) == pytest.approx(t_fsdp, rel=1e-9)

