"""One distillation step of a demo-sized teacher/student pair: chunked engine vs plain logits.

A step is what the training loop does per optimizer step: render the batch for both models,
teacher forward (no grad), student forward, TAID loss, backward, AdamW update. Each variant
runs in its own subprocess (so its peak memory is its own), does one warm-up step, then times
``--repeats`` steps and reports the best. Peak memory: CPU max-RSS growth over the resident
size before the first step; CUDA max_memory_allocated over the allocation before it.

``--vocab`` widens both LM heads (the tokenizer stays the small offline BPE; the extra rows are
real parameters the loss runs over), to show where chunking starts to matter.

The last line printed is ONE JSON object:
  {"chunked_step_s": .., "plain_step_s": .., "chunked_peak_mb": .., "plain_peak_mb": .., ...}
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from .runner import current_rss_mb, max_rss_mb, print_json, run_child, sync


def run_variant(args: argparse.Namespace) -> dict:
    import torch

    from taid_vlm.data import load_records
    from taid_vlm.demo.shapes import generate_shapes
    from taid_vlm.models import adapt, check_alignment
    from taid_vlm.models.composed import build_composed_vlm
    from taid_vlm.losses import EngineOptions
    from taid_vlm.train.objective import training_loss

    device = torch.device(args.device)
    work = Path(tempfile.mkdtemp(prefix="bench-step-"))
    generate_shapes(work, max(args.batch_size, 16), 2, seed=0, image_size=args.image_size)
    records = load_records(work / "train.jsonl")[: args.batch_size]
    texts = [m["content"] for r in load_records(work / "train.jsonl") for m in r.messages]
    wide = {"text_config": {"vocab_size": args.vocab}} if args.vocab else {}
    teacher_model, teacher_proc = build_composed_vlm({"size": args.teacher_size, "image_size": args.image_size, **wide}, texts=texts, seed=1)
    student_model, student_proc = build_composed_vlm({"size": args.student_size, "image_size": args.image_size, **wide},
                                                     tokenizer=teacher_proc.tokenizer, seed=2)
    teacher = adapt(teacher_model, teacher_proc, role="teacher", device=device)
    student = adapt(student_model, student_proc, role="student", device=device)
    optimizer = torch.optim.AdamW(student.model.parameters(), lr=1e-4)
    chunked = args.variant == "chunked"

    def step() -> None:
        batch = student.render(records)
        student_out = student.response_outputs(batch, return_hidden=chunked)
        teacher_out = check_alignment(teacher.response_outputs(records, return_hidden=chunked), student_out, records)
        loss = training_loss("taid", student_out, teacher_out, num_tokens=batch.num_response_tokens,
                             options=EngineOptions(chunked=chunked), params={"t": 0.5}).total
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        del student_out, teacher_out, loss

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = current_rss_mb()
    step()  # warm-up (allocates the optimizer state too, which both variants pay)
    sync(device)
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if device.type == "cuda" else max_rss_mb() - base
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in (("teacher", teacher_model), ("student", student_model))}
    return {"step_s": round(min(times), 4), "peak_mb": round(peak, 1), "params": params,
            "response_tokens": int(student.render(records).num_response_tokens)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher-size", default="base")
    parser.add_argument("--student-size", default="small")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=None, help="widen both LM heads to this many rows (e.g. 151936)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--variant", choices=["chunked", "plain"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print_json(run_variant(args))
        return
    results = {}
    for variant in ("plain", "chunked"):
        results[variant] = r = run_child("step", ["--variant", variant] + sys.argv[1:], f"{variant} variant")
        print(f"{variant:8s} step {r['step_s']:.3f} s   peak {r['peak_mb']:.1f} MB   ({r['response_tokens']} response tokens)", flush=True)
    print_json({
        "chunked_step_s": results["chunked"]["step_s"], "plain_step_s": results["plain"]["step_s"],
        "chunked_peak_mb": results["chunked"]["peak_mb"], "plain_peak_mb": results["plain"]["peak_mb"],
        "device": args.device, "teacher": args.teacher_size, "student": args.student_size, "vocab": args.vocab or "tokenizer",
        "batch_size": args.batch_size, "params": results["chunked"]["params"],
    })


if __name__ == "__main__":
    main()
