"""Two real CPU processes (gloo): torch DDP and FSDP2 each train the student one process trains.

Every run here distils the same tiny composed pair for 6 steps with a global batch of 4 (two
ranks x 1 record x 2 accumulated micro-batches, or one process x 4 records). One module fixture
trains the one-process reference; each strategy then
- trains the whole run on two processes: the loss of every step, TAID's t and the student equal
  the reference's (ddp through two ``torchrun --nnodes 2`` launches on 127.0.0.1, the multi-node
  rehearsal; fsdp through ``accelerate launch``, sharding its teacher and checkpointing
  activations too);
- is killed with SIGKILL after its step-4 checkpoint (DCP, written by both ranks) and resumed:
  it ends where the whole run ends.
fsdp's step-4 checkpoint is then resumed by ONE launched process (another world size; it
shards over a mesh of one) with the same global batch: it ends with the two-process student.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from taid_vlm.data import load_records
from taid_vlm.demo.shapes import generate_shapes
from taid_vlm.models.composed import build_composed_vlm

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STEPS = 6
pytestmark = pytest.mark.skipif(shutil.which("accelerate", path=str(BIN)) is None, reason="accelerate CLI missing")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Shapes data, a saved teacher, the common arguments and the one-process run (batch 4)."""
    root = tmp_path_factory.mktemp("dist")
    generate_shapes(root / "shapes", 24, 2, seed=0, image_size=32)
    texts = [m["content"] for r in load_records(root / "shapes" / "train.jsonl") for m in r.messages]
    teacher, processor = build_composed_vlm("tiny", texts=texts, seed=1)
    teacher.save_pretrained(root / "teacher")
    processor.save_pretrained(root / "teacher")
    args = ["distill", f"--teacher={root / 'teacher'}", "--student=composed:tiny?num_image_tokens=4&seed=2",
            f"--data={root / 'shapes' / 'train.jsonl'}", f"--max-steps={STEPS}", "--save-every=2",
            "--keep-checkpoints=10", "--no-progress", "--log-every=1", "lr=0.003", "taid_alpha_per_run=2"]
    one = subprocess.run([sys.executable, "-m", "taid_vlm.cli", *args, f"--output={root / 'single'}", "--batch-size=4"],
                         env=_env(), capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    start = build_composed_vlm("tiny", texts=texts, num_image_tokens=4, seed=2)[0].state_dict()
    single = _student(root / "single")
    moved = max((single[k] - start[k]).abs().max().item() for k in single if k in start)
    assert moved > 1e-3  # training moved the weights
    assert json.loads((root / "single" / "ranks.json").read_text())[0]["sharded"] is False
    return {"root": root, "args": args + ["--batch-size=1", "--grad-accum=2"], "single": single,
            "rows": _rows(root / "single")}


def test_ddp_over_two_nodes_matches_one_process_and_resumes_exactly_after_sigkill(reference):
    root, args = reference["root"], reference["args"] + ["--distributed=ddp"]
    whole = root / "ddp"
    port = _free_port()
    nodes = [subprocess.Popen([str(BIN / "torchrun"), "--nnodes", "2", "--node_rank", str(rank), "--nproc_per_node", "1",
                               "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "taid_vlm.cli", *args,
                               f"--output={whole}"], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in (0, 1)]
    for node in nodes:
        _, err = node.communicate(timeout=600)
        assert node.returncode == 0, err[-3000:]
    _same_as_reference(whole, reference, weights_tol=1e-5)

    killed = root / "ddp-killed"
    _kill_after_step_4(args + [f"--output={killed}"])
    _resume(args + [f"--output={killed}"])
    _same_run(killed, whole)


def test_fsdp_matches_one_process_resumes_exactly_after_sigkill_and_on_one_process(reference):
    root, args = reference["root"], reference["args"] + ["--distributed=fsdp"]
    whole = root / "fsdp"
    done = subprocess.run(_launch_two(args + ["--teacher-shard", "--gradient-checkpointing", f"--output={whole}"]),
                          env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    _same_as_reference(whole, reference, weights_tol=1e-5)
    ranks = json.loads((whole / "ranks.json").read_text())
    assert [r["t"] for r in ranks] == [ranks[0]["t"]] * 2 and [r["sharded"] for r in ranks] == [True, True]
    last = whole / "checkpoints" / f"step-{STEPS:07d}" / "state"
    assert sorted(p.name for p in last.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]  # both ranks wrote

    killed = root / "fsdp-killed"
    _kill_after_step_4(args + [f"--output={killed}"])
    _resume(args + [f"--output={killed}"])
    _same_run(killed, whole)

    # another world size: the two-process step-4 checkpoint resumed by ONE launched process, which
    # shards over a mesh of one (how a single GPU runs the sharded path) with the same global batch
    alone = root / "fsdp-on-one"
    shutil.copytree(whole, alone, ignore=shutil.ignore_patterns("student"))
    one = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
                          "-m", "taid_vlm.cli", *args, "--batch-size=2", f"--output={alone}", "--resume-accept-changes",
                          f"--resume={alone / 'checkpoints' / 'step-0000004'}"],
                         env=_env(), capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    assert "random streams start afresh" in one.stderr
    assert [r["sharded"] for r in json.loads((alone / "ranks.json").read_text())] == [True]
    assert _max_rel_diff(_student(alone), _student(whole)) < 1e-5
    assert [r["step"] for r in _rows(alone)] == list(range(1, STEPS + 1))


# ---- helpers --------------------------------------------------------------------------------------


def _same_as_reference(run: Path, reference: dict, weights_tol: float) -> None:
    """Loss and t of every step and the student equal the one-process run's."""
    rows, single = _rows(run), reference["rows"]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in single], rel=1e-5)
    assert [r["t"] for r in rows] == pytest.approx([r["t"] for r in single], rel=1e-6)
    assert rows[-1]["t"] > rows[0]["t"]
    assert _max_rel_diff(_student(run), reference["single"]) < weights_tol
    ranks = json.loads((run / "ranks.json").read_text())
    assert [r["rank"] for r in ranks] == [0, 1]


def _same_run(resumed: Path, whole: Path) -> None:
    assert _max_rel_diff(_student(resumed), _student(whole)) < 1e-6
    rows = {r["step"]: r for r in _rows(resumed)}
    assert sorted(rows) == list(range(1, STEPS + 1))
    assert [rows[s]["t"] for s in sorted(rows)] == pytest.approx([r["t"] for r in _rows(whole)], rel=1e-9)


def _kill_after_step_4(args: list[str]) -> None:
    out = Path(next(a for a in args if a.startswith("--output=")).split("=", 1)[1])
    victim = subprocess.Popen(_launch_two(args), env=_env(), start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = out / "checkpoints" / "step-0000004" / "trainer_state.json"
    deadline = time.time() + 400
    while not marker.exists() and time.time() < deadline and victim.poll() is None:
        time.sleep(0.05)
    os.killpg(victim.pid, signal.SIGKILL)  # the launcher and both ranks
    victim.wait()
    assert marker.exists(), "the run never reached its step-4 checkpoint"
    assert not (out / "student").exists()


def _resume(args: list[str]) -> None:
    resumed = subprocess.run(_launch_two(args + ["--resume"]), env=_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]


def _launch_two(args: list[str]) -> list[str]:
    """Two real CPU processes over gloo (``accelerate launch --cpu`` would start only one)."""
    return [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
            "-m", "taid_vlm.cli", *args]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    return dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")


def _student(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "student" / "model.safetensors"))


def _rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _max_rel_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest per-tensor relative difference ||a - b|| / ||b|| over the whole student."""
    assert a.keys() == b.keys()
    return max(((a[k].double() - b[k].double()).norm() / b[k].double().norm().clamp_min(1e-30)).item() for k in a)
