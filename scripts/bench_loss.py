"""TAID forward+backward: plain full-logits path vs the chunked fused-linear engine.

Each variant runs in its own subprocess so that its peak memory is its own:
- CPU: growth of the process's max resident set size over the resident size just before the
  loss (inputs already allocated);
- CUDA: torch.cuda.max_memory_allocated over the allocation just before the loss.
Time is the best of ``--repeats`` forward+backward passes (wall clock, synchronised on CUDA).
The teacher is given as hidden states + LM head in both variants, as a live teacher would be.

The last line printed is ONE JSON object:
  {"naive_peak_mb": .., "chunked_peak_mb": .., "naive_s": .., "chunked_s": .., "device": ..}

Usage: python scripts/bench_loss.py [--tokens 2048] [--hidden 1024] [--vocab 151936] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import current_rss_mb, machine, max_rss_mb, write_json  # noqa: E402


def run_variant(args: argparse.Namespace) -> dict:
    import torch

    from taid_vlm.losses import chunked_divergence, divergence

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    g = torch.Generator(device="cpu").manual_seed(0)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype)

    hidden = randn(args.tokens, args.hidden).requires_grad_()
    weight = randn(args.vocab, args.hidden, scale=args.hidden**-0.5).requires_grad_()
    teacher_hidden = randn(args.tokens, args.hidden)
    teacher_weight = randn(args.vocab, args.hidden, scale=args.hidden**-0.5)

    def step() -> None:
        hidden.grad = weight.grad = None
        if args.variant == "naive":
            with torch.no_grad():
                teacher_logits = teacher_hidden @ teacher_weight.t()
            loss = divergence("taid", hidden @ weight.t(), teacher_logits, t=0.5)
        else:
            loss = chunked_divergence(
                "taid", hidden, weight, teacher_hidden=teacher_hidden, teacher_weight=teacher_weight,
                t=0.5, chunk_size=args.chunk_size,
            )
        loss.backward()

    times = []
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = current_rss_mb()
    for _ in range(args.repeats):
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = max_rss_mb() - base
    return {"peak_mb": round(peak, 1), "seconds": round(min(times), 4), "all_seconds": [round(t, 4) for t in times]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--chunk-size", type=int, default=None, help="tokens per chunk (default: auto from the vocabulary)")
    parser.add_argument("--out", help="also write the summary, the command and the machine to this JSON file")
    parser.add_argument("--variant", choices=["naive", "chunked"], help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.variant:
        print(json.dumps(run_variant(args)))
        return

    load_at_start = os.getloadavg()
    results = {}
    for variant in ("naive", "chunked"):
        cmd = [sys.executable, __file__, "--variant", variant] + sys.argv[1:]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"{variant} variant failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{variant:8s} peak {results[variant]['peak_mb']:9.1f} MB   time {results[variant]['seconds']:8.3f} s   (runs: {results[variant]['all_seconds']})", flush=True)
    summary = {
        "naive_peak_mb": results["naive"]["peak_mb"],
        "chunked_peak_mb": results["chunked"]["peak_mb"],
        "naive_s": results["naive"]["seconds"],
        "chunked_s": results["chunked"]["seconds"],
        "device": args.device,
        "tokens": args.tokens, "hidden": args.hidden, "vocab": args.vocab, "dtype": args.dtype,
    }
    if args.out:
        write_json(args.out, {"summary": summary, "variants": results, "command": " ".join(sys.argv),
                              "machine": machine(load_at_start)})
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
